from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import CheckConstraint, ForeignKey, String
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, IdMixin, StringEnum, TimestampMixin


class OrganizationKind(StrEnum):
    company = "company"
    municipality = "municipality"
    seller = "seller"
    government = "government"
    platform = "platform"


class OrganizationStatus(StrEnum):
    active = "active"
    suspended = "suspended"


class Scope(StrEnum):
    read = "read"
    trade = "trade"
    bid = "bid"
    retire = "retire"
    transfer = "transfer"
    keys = "keys"
    admin = "admin"
    registry = "registry"
    auctioneer = "auctioneer"


class Organization(IdMixin, TimestampMixin, Base):
    __tablename__ = "organizations"
    __table_args__ = (
        CheckConstraint("prefecture ~ '^(0[1-9]|[1-3][0-9]|4[0-7])$'", name="prefecture"),
        CheckConstraint("corporate_number ~ '^[0-9]{13}$'", name="corporate_number"),
        CheckConstraint(
            "kind IN ('company', 'municipality', 'seller', 'government', 'platform')", name="kind"
        ),
        CheckConstraint("status IN ('active', 'suspended')", name="status"),
    )

    name: Mapped[str] = mapped_column(String(200), nullable=False)
    kind: Mapped[OrganizationKind] = mapped_column(StringEnum(OrganizationKind, 20), nullable=False)
    prefecture: Mapped[str | None] = mapped_column(String(2))
    corporate_number: Mapped[str | None] = mapped_column(String(13), unique=True)
    group: Mapped[str | None] = mapped_column(String(100), index=True)
    status: Mapped[OrganizationStatus] = mapped_column(
        StringEnum(OrganizationStatus, 20), nullable=False, default=OrganizationStatus.active
    )


class ApiKey(IdMixin, TimestampMixin, Base):
    __tablename__ = "api_keys"

    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT"), nullable=False, index=True
    )
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    prefix: Mapped[str] = mapped_column(String(16), nullable=False)
    # SHA-256 of the whole key. Keys carry 256 bits of randomness, so a fast hash is enough:
    # there is nothing to brute-force, and lookup stays one index probe per request.
    key_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    scopes: Mapped[list[str]] = mapped_column(ARRAY(String(20)), nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column()
