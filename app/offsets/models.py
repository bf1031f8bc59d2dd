"""Registry tables: what a credit is (projects, batches, serial blocks) and what becomes of it
(transfers, retirements, claims, offset pools, municipal goals).

Invariants held in the database as well as in Python:
- a batch's serial range is unique across the registry (exclusion constraint);
- the live blocks of a batch never overlap (exclusion constraint) and, with the checker,
  partition its range exactly;
- a retired block never changes again (trigger);
- a retirement's claimed grams never exceed its quantity (CHECK); a pool never goes below zero.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    ForeignKey,
    Identity,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.core.time import utc_now
from app.db.base import Base, IdMixin, StringEnum, TimestampMixin, values_in
from app.offsets.serials import BlockState

GRAMS_PER_CREDIT = 1_000_000  # 1 credit = 1 t-CO2e = 1,000,000 g


class Category(StrEnum):
    energy_saving = "energy_saving"
    renewable_power = "renewable_power"
    renewable_heat = "renewable_heat"
    forest = "forest"
    industrial = "industrial"
    agriculture = "agriculture"
    waste = "waste"
    other = "other"


class Purpose(StrEnum):
    offset = "offset"  # カーボン・オフセット
    law_reporting = "law_reporting"  # 温対法報告
    re100 = "re100"
    sbt = "sbt"
    other = "other"


class ClaimType(StrEnum):
    product = "product"
    service = "service"
    event = "event"
    organization = "organization"
    municipality = "municipality"


class ClaimStatus(StrEnum):
    active = "active"
    revoked = "revoked"


class Project(IdMixin, TimestampMixin, Base):
    __tablename__ = "offset_projects"
    __table_args__ = (
        CheckConstraint(r"methodology ~ '^(EN-S|EN-R|FO|AG|IP|WA)-[0-9]{3}$'", name="methodology"),
        CheckConstraint(values_in("category", Category), name="category"),
        CheckConstraint("prefecture ~ '^(0[1-9]|[1-3][0-9]|4[0-7])$'", name="prefecture"),
    )

    # The registry's own project number, shown in serial display forms (``P000001``).
    number: Mapped[int] = mapped_column(BigInteger, Identity(), unique=True, nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    owner_organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT"), nullable=False, index=True
    )
    methodology: Mapped[str] = mapped_column(String(10), nullable=False)
    category: Mapped[Category] = mapped_column(StringEnum(Category, 20), nullable=False)
    prefecture: Mapped[str] = mapped_column(String(2), nullable=False)


class SerialCounter(Base):
    """One row: the next unallocated serial number of the registry."""

    __tablename__ = "offset_serial_counter"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    next_serial: Mapped[int] = mapped_column(BigInteger, nullable=False)


class Batch(IdMixin, Base):
    __tablename__ = "offset_batches"
    __table_args__ = (
        CheckConstraint("quantity > 0", name="quantity_positive"),
        CheckConstraint("serial_start >= 1 AND serial_end >= serial_start", name="serial_range"),
        CheckConstraint("serial_end - serial_start + 1 = quantity", name="serial_quantity"),
        CheckConstraint("monitoring_period_end >= monitoring_period_start", name="period"),
        CheckConstraint(values_in("category", Category), name="category"),
    )

    project_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("offset_projects.id", ondelete="RESTRICT"), nullable=False, index=True
    )
    issued_to_organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT"), nullable=False
    )
    category: Mapped[Category] = mapped_column(StringEnum(Category, 20), nullable=False)
    prefecture: Mapped[str] = mapped_column(String(2), nullable=False)
    quantity: Mapped[int] = mapped_column(BigInteger, nullable=False)
    monitoring_period_start: Mapped[date] = mapped_column(Date, nullable=False)
    monitoring_period_end: Mapped[date] = mapped_column(Date, nullable=False)
    vintage: Mapped[int] = mapped_column(SmallInteger, nullable=False)
    labels: Mapped[list[str]] = mapped_column(ARRAY(String(40)), nullable=False)
    serial_start: Mapped[int] = mapped_column(BigInteger, nullable=False)
    serial_end: Mapped[int] = mapped_column(BigInteger, nullable=False)
    asset: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    issued_at: Mapped[datetime] = mapped_column(default=utc_now, nullable=False)


class Block(IdMixin, Base):
    """A contiguous run of serials of one batch, held by one organisation, in one state.

    Blocks are never edited in place: an operation closes blocks (``closed_at``) and creates
    new ones whose ``parent_ids`` keep the lineage. Live blocks have ``closed_at`` NULL.
    """

    __tablename__ = "offset_blocks"
    __table_args__ = (
        CheckConstraint("serial_end >= serial_start", name="serial_range"),
        CheckConstraint(values_in("state", BlockState), name="state"),
        CheckConstraint("(state = 'held') = (hold_id IS NOT NULL)", name="hold"),
        CheckConstraint("(state = 'retired') = (retirement_id IS NOT NULL)", name="retirement"),
        CheckConstraint("state <> 'retired' OR closed_at IS NULL", name="retired_live"),
        Index(
            "ix_offset_blocks_live",
            "batch_id",
            "holder_organization_id",
            "serial_start",
            postgresql_where="closed_at IS NULL",
        ),
        # Only retired blocks have one (a partial index writes nothing for the others, which
        # every transfer, hold and delivery creates and closes: migration 0030).
        Index(
            "ix_offset_blocks_retirement_id",
            "retirement_id",
            postgresql_where="retirement_id IS NOT NULL",
        ),
    )

    batch_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("offset_batches.id", ondelete="RESTRICT"), nullable=False
    )
    holder_organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT"), nullable=False
    )
    serial_start: Mapped[int] = mapped_column(BigInteger, nullable=False)
    serial_end: Mapped[int] = mapped_column(BigInteger, nullable=False)
    state: Mapped[BlockState] = mapped_column(StringEnum(BlockState, 10), nullable=False)
    hold_id: Mapped[uuid.UUID | None] = mapped_column()
    retirement_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("offset_retirements.id", ondelete="RESTRICT")
    )
    parent_ids: Mapped[list[uuid.UUID]] = mapped_column(ARRAY(Uuid()), nullable=False)
    created_at: Mapped[datetime] = mapped_column(default=utc_now, nullable=False)
    closed_at: Mapped[datetime | None] = mapped_column()


class CreditTransfer(IdMixin, Base):
    __tablename__ = "offset_transfers"
    __table_args__ = (CheckConstraint("quantity > 0", name="quantity_positive"),)

    batch_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("offset_batches.id", ondelete="RESTRICT"), nullable=False, index=True
    )
    from_organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT"), nullable=False, index=True
    )
    to_organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT"), nullable=False, index=True
    )
    quantity: Mapped[int] = mapped_column(BigInteger, nullable=False)
    serial_ranges: Mapped[list[list[int]]] = mapped_column(JSONB, nullable=False)
    kind: Mapped[str] = mapped_column(String(20), nullable=False)
    created_at: Mapped[datetime] = mapped_column(default=utc_now, nullable=False)


class Retirement(IdMixin, Base):
    __tablename__ = "offset_retirements"
    __table_args__ = (
        CheckConstraint("quantity > 0", name="quantity_positive"),
        CheckConstraint(values_in("purpose", Purpose), name="purpose"),
        CheckConstraint(
            f"claimed_g >= 0 AND claimed_g <= quantity * {GRAMS_PER_CREDIT}", name="claimed"
        ),
        Index("ix_offset_retirements_public", "retired_at", postgresql_where="is_public"),
    )

    code: Mapped[str] = mapped_column(String(20), nullable=False, unique=True)
    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT"), nullable=False, index=True
    )
    batch_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("offset_batches.id", ondelete="RESTRICT"), nullable=False, index=True
    )
    quantity: Mapped[int] = mapped_column(BigInteger, nullable=False)
    purpose: Mapped[Purpose] = mapped_column(StringEnum(Purpose, 20), nullable=False)
    purpose_detail: Mapped[str | None] = mapped_column(String(500))
    beneficiary_name: Mapped[str] = mapped_column(String(200), nullable=False)
    is_public: Mapped[bool] = mapped_column(Boolean, nullable=False)
    serial_ranges: Mapped[list[list[int]]] = mapped_column(JSONB, nullable=False)
    # Grams of this retirement already backing claims or dedicated to an offset pool.
    claimed_g: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    retired_at: Mapped[datetime] = mapped_column(default=utc_now, nullable=False)


class OffsetPool(IdMixin, TimestampMixin, Base):
    """Grams dedicated to per-unit claims. What is left is kept in ``offset_pool_shards``:
    one pool row would be a hot spot that every checkout locks through its commit."""

    __tablename__ = "offset_pools"
    __table_args__ = (
        CheckConstraint("total_g >= 0", name="total"),
        CheckConstraint("low_balance_g IS NULL OR low_balance_g >= 0", name="low_balance"),
        CheckConstraint(values_in("claim_type", ClaimType), name="claim_type"),
    )

    code: Mapped[str] = mapped_column(String(20), nullable=False, unique=True)
    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT"), nullable=False, index=True
    )
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    claim_type: Mapped[ClaimType] = mapped_column(StringEnum(ClaimType, 20), nullable=False)
    subject: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    total_g: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    low_balance_g: Mapped[int | None] = mapped_column(BigInteger)


POOL_SHARDS = 16


class OffsetPoolShard(Base):
    """One of a pool's ``POOL_SHARDS`` counters of remaining grams. A draw takes from one
    shard chosen at random, so concurrent checkouts lock different rows and their commits
    share one disk flush (group commit) instead of queueing on a single row."""

    __tablename__ = "offset_pool_shards"
    __table_args__ = (CheckConstraint("remaining_g >= 0", name="remaining"),)

    pool_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("offset_pools.id", ondelete="RESTRICT"), primary_key=True
    )
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    remaining_g: Mapped[int] = mapped_column(BigInteger, nullable=False)


class Claim(IdMixin, Base):
    """A carbon-offset claim. Whole claims cite retirements (``offset_claim_allocations``);
    unit claims (``pool_id`` set) draw grams from an offset pool."""

    __tablename__ = "offset_claims"
    __table_args__ = (
        CheckConstraint(values_in("claim_type", ClaimType), name="claim_type"),
        CheckConstraint(values_in("status", ClaimStatus), name="status"),
        CheckConstraint("footprint_g > 0", name="footprint_positive"),
        CheckConstraint("covered_g >= 0 AND covered_g <= footprint_g", name="covered"),
        CheckConstraint("(status = 'revoked') = (revoked_at IS NOT NULL)", name="revoked"),
        UniqueConstraint("pool_id", "reference"),
    )

    code: Mapped[str] = mapped_column(String(20), nullable=False, unique=True)
    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT"), nullable=False, index=True
    )
    pool_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("offset_pools.id", ondelete="RESTRICT"), index=True
    )
    reference: Mapped[str | None] = mapped_column(String(200))
    claim_type: Mapped[ClaimType] = mapped_column(StringEnum(ClaimType, 20), nullable=False)
    subject: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    footprint_g: Mapped[int] = mapped_column(BigInteger, nullable=False)
    covered_g: Mapped[int] = mapped_column(BigInteger, nullable=False)
    period_start: Mapped[date | None] = mapped_column(Date)
    period_end: Mapped[date | None] = mapped_column(Date)
    status: Mapped[ClaimStatus] = mapped_column(StringEnum(ClaimStatus, 10), nullable=False)
    revoked_reason: Mapped[str | None] = mapped_column(String(500))
    revoked_at: Mapped[datetime | None] = mapped_column()
    # The signed document, exactly as signed (canonical JSON), its Ed25519 signature and key id.
    document: Mapped[str] = mapped_column(Text, nullable=False)
    signature: Mapped[str] = mapped_column(String(100), nullable=False)
    key_id: Mapped[str] = mapped_column(String(40), nullable=False)
    created_at: Mapped[datetime] = mapped_column(default=utc_now, nullable=False)


class ClaimAllocation(Base):
    """Grams of one retirement backing one claim (whole claims) or one pool (funding)."""

    __tablename__ = "offset_claim_allocations"
    __table_args__ = (
        CheckConstraint("grams > 0", name="grams_positive"),
        CheckConstraint("(claim_id IS NULL) <> (pool_id IS NULL)", name="one_target"),
        Index("ix_offset_claim_allocations_retirement_id", "retirement_id"),
        Index("ix_offset_claim_allocations_claim_id", "claim_id"),
        Index("ix_offset_claim_allocations_pool_id", "pool_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    retirement_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("offset_retirements.id", ondelete="RESTRICT"), nullable=False
    )
    claim_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("offset_claims.id", ondelete="RESTRICT")
    )
    pool_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("offset_pools.id", ondelete="RESTRICT")
    )
    grams: Mapped[int] = mapped_column(BigInteger, nullable=False)
    released_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utc_now, nullable=False)


class Goal(IdMixin, TimestampMixin, Base):
    """A municipality's yearly target: tonnes to offset and the share from local credits."""

    __tablename__ = "offset_goals"
    __table_args__ = (
        UniqueConstraint("organization_id", "fiscal_year"),
        CheckConstraint("target_tonnes > 0", name="target_positive"),
        CheckConstraint(
            "local_share_target_pct >= 0 AND local_share_target_pct <= 100", name="local_share"
        ),
    )

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT"), nullable=False
    )
    fiscal_year: Mapped[int] = mapped_column(Integer, nullable=False)
    target_tonnes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    local_share_target_pct: Mapped[int] = mapped_column(SmallInteger, nullable=False, default=0)
