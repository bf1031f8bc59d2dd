"""Ledger tables. Rows here are written only through ``ledger.service`` (and its SQL function).

- ``ledger_assets``: what can be counted (``JPY``; one ``CREDIT:<batch>`` asset per credit batch).
- ``ledger_accounts``: an owner's balance of one asset, of one kind. Participants have an
  ``available`` and a ``held`` account per asset; system accounts (no owner) are the sources
  and sinks: ``external`` (money from banks, credits from issuance), ``retired``, ``fees``.
  A ``fees`` account may be scoped (``scope_id``: a market product's id, without a foreign
  key, as the ledger knows no market), so that the fills of different products never queue
  on one fee account's row; the platform's fees are the sum of its ``fees`` accounts.
  ``balance`` is a cache of the sum of the account's postings, updated in the same statement
  that writes them, and checked by ``tanso ledger verify``.
- ``ledger_entries`` and ``ledger_postings``: append-only double entry; per asset the
  postings of an entry sum to zero (enforced at commit by a deferred constraint trigger).
- ``ledger_holds``: reservations; each is mirrored by the balance of the owner's held account.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.core.time import utc_now
from app.db.base import Base, IdMixin, StringEnum, TimestampMixin


class AssetKind(StrEnum):
    cash = "cash"
    credit = "credit"


class AccountKind(StrEnum):
    available = "available"
    held = "held"
    external = "external"
    retired = "retired"
    fees = "fees"


PARTICIPANT_KINDS = (AccountKind.available, AccountKind.held)


class HoldStatus(StrEnum):
    active = "active"
    closed = "closed"


class Asset(Base):
    __tablename__ = "ledger_assets"
    __table_args__ = (CheckConstraint("kind IN ('cash', 'credit')", name="kind"),)

    code: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[AssetKind] = mapped_column(StringEnum(AssetKind, 10), nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    created_at: Mapped[datetime] = mapped_column(default=utc_now, nullable=False)


class Account(IdMixin, Base):
    __tablename__ = "ledger_accounts"
    __table_args__ = (
        UniqueConstraint(
            "organization_id", "asset", "kind", "scope_id", postgresql_nulls_not_distinct=True
        ),
        UniqueConstraint("id", "asset"),
        CheckConstraint("scope_id IS NULL OR kind = 'fees'", name="scope"),
        CheckConstraint("NOT is_non_negative OR balance >= 0", name="non_negative"),
        CheckConstraint(
            "kind IN ('available', 'held', 'external', 'retired', 'fees')", name="kind"
        ),
        CheckConstraint(
            "(organization_id IS NULL) = (kind NOT IN ('available', 'held'))", name="owner"
        ),
        CheckConstraint("version >= 0", name="version"),
    )

    organization_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT")
    )
    asset: Mapped[str] = mapped_column(ForeignKey("ledger_assets.code"), nullable=False)
    kind: Mapped[AccountKind] = mapped_column(StringEnum(AccountKind, 10), nullable=False)
    scope_id: Mapped[uuid.UUID | None] = mapped_column()  # a fees account's product
    is_non_negative: Mapped[bool] = mapped_column(Boolean, nullable=False)
    balance: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default=text("0"))
    version: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(default=utc_now, nullable=False)


class Entry(Base):
    __tablename__ = "ledger_entries"
    __table_args__ = (
        # Unique where given; most entries (every order's, every auction's) have none, and a
        # partial index writes nothing for them (migration 0030).
        Index(
            "ledger_entries_idempotency_key_key",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(40), nullable=False)
    reference: Mapped[str | None] = mapped_column(String(200))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONB)
    # The transaction that wrote the entry: postings may only be added by that transaction.
    txid: Mapped[int] = mapped_column(
        BigInteger, nullable=False, server_default=text("pg_current_xact_id()::text::bigint")
    )
    created_at: Mapped[datetime] = mapped_column(
        nullable=False, server_default=text("statement_timestamp()")
    )


class Posting(Base):
    __tablename__ = "ledger_postings"
    __table_args__ = (
        ForeignKeyConstraint(
            ["account_id", "asset"],
            ["ledger_accounts.id", "ledger_accounts.asset"],
            name="ledger_postings_account_id_asset_fkey",
        ),
        CheckConstraint("amount <> 0", name="amount_non_zero"),
        Index("ix_ledger_postings_account_id_id", "account_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    entry_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("ledger_entries.id"), nullable=False, index=True
    )
    account_id: Mapped[uuid.UUID] = mapped_column(nullable=False)
    asset: Mapped[str] = mapped_column(String(64), nullable=False)
    amount: Mapped[int] = mapped_column(BigInteger, nullable=False)
    balance_after: Mapped[int] = mapped_column(BigInteger, nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        nullable=False, server_default=text("statement_timestamp()")
    )


class Hold(IdMixin, TimestampMixin, Base):
    __tablename__ = "ledger_holds"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("remaining >= 0 AND remaining <= amount", name="remaining"),
        CheckConstraint("status IN ('active', 'closed')", name="status"),
        CheckConstraint("(status = 'active') = (remaining > 0)", name="status_remaining"),
        Index("ix_ledger_holds_organization_id_asset", "organization_id", "asset"),
    )

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT"), nullable=False
    )
    asset: Mapped[str] = mapped_column(ForeignKey("ledger_assets.code"), nullable=False)
    amount: Mapped[int] = mapped_column(BigInteger, nullable=False)
    remaining: Mapped[int] = mapped_column(BigInteger, nullable=False)
    status: Mapped[HoldStatus] = mapped_column(StringEnum(HoldStatus, 10), nullable=False)
    reference: Mapped[str | None] = mapped_column(String(200))


class Deposit(IdMixin, Base):
    __tablename__ = "ledger_deposits"
    __table_args__ = (
        UniqueConstraint("organization_id", "reference"),
        CheckConstraint("amount > 0", name="amount_positive"),
    )

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT"), nullable=False
    )
    amount: Mapped[int] = mapped_column(BigInteger, nullable=False)
    reference: Mapped[str] = mapped_column(String(200), nullable=False)
    status: Mapped[str] = mapped_column(String(20), nullable=False)
    entry_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("ledger_entries.id"), nullable=False)
    created_at: Mapped[datetime] = mapped_column(default=utc_now, nullable=False)
