"""Order book tables: products, orders (with their holds and arrival sequence), trades.

Invariants held in the database as well as in Python: positive prices and quantities, valid
enum values, ``0 <= filled_quantity <= quantity``, a limit order has a price and a market order
none, one ``client_order_id`` per organisation, one arrival ``sequence`` per order (an identity
column: the book's time priority).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.core.time import utc_now
from app.db.base import Base, IdMixin, TimestampMixin, values_in
from app.market.matching import OrderType, Side


class OrderStatus(StrEnum):
    open = "open"
    partially_filled = "partially_filled"
    filled = "filled"
    cancelled = "cancelled"
    expired = "expired"  # a GTD order whose ``expires_at`` passed (``app.market.tasks``)


OPEN_STATUSES = (OrderStatus.open, OrderStatus.partially_filled)


class OrderTimeInForce(StrEnum):
    """The times in force the API accepts; a GTD order rests like GTC until ``expires_at``."""

    gtc = "gtc"
    ioc = "ioc"
    fok = "fok"
    gtd = "gtd"


class Product(IdMixin, TimestampMixin, Base):
    __tablename__ = "market_products"
    __table_args__ = (
        CheckConstraint("code ~ '^[A-Z0-9][A-Z0-9-]{1,39}$'", name="code"),
        CheckConstraint("reference_price > 0", name="reference_price"),
        CheckConstraint("last_trade_price > 0", name="last_trade_price"),
        CheckConstraint("band_bps > 0 AND band_bps <= 10000", name="band_bps"),
    )

    code: Mapped[str] = mapped_column(String(40), nullable=False, unique=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    # The one batch whose credits the product trades (category products come later).
    batch_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("offset_batches.id", ondelete="RESTRICT"), nullable=False, index=True
    )
    reference_price: Mapped[int | None] = mapped_column(BigInteger)
    last_trade_price: Mapped[int | None] = mapped_column(BigInteger)
    band_bps: Mapped[int] = mapped_column(Integer, nullable=False)


class MarketOrder(IdMixin, TimestampMixin, Base):
    __tablename__ = "market_orders"
    __table_args__ = (
        CheckConstraint(values_in("side", Side), name="side"),
        CheckConstraint(values_in("type", OrderType), name="type"),
        CheckConstraint(values_in("status", OrderStatus), name="status"),
        CheckConstraint(values_in("time_in_force", OrderTimeInForce), name="time_in_force"),
        CheckConstraint("quantity > 0", name="quantity"),
        CheckConstraint("price > 0", name="price"),
        CheckConstraint(
            "(type = 'limit' AND price IS NOT NULL) OR (type = 'market' AND price IS NULL)",
            name="price_by_type",
        ),
        CheckConstraint(
            "filled_quantity >= 0 AND filled_quantity <= quantity", name="filled_quantity"
        ),
        CheckConstraint("filled_amount >= 0", name="filled_amount"),
        CheckConstraint(
            "(side = 'buy') = (cash_hold_id IS NOT NULL)"
            " AND (side = 'sell') = (credit_hold_id IS NOT NULL)",
            name="holds",
        ),
        CheckConstraint("(time_in_force = 'gtd') = (expires_at IS NOT NULL)", name="expires_at"),
        UniqueConstraint("organization_id", "client_order_id"),
        Index("ix_market_orders_product_id_status", "product_id", "status"),
        # The expiry task's scan: open GTD orders by expiry.
        Index(
            "ix_market_orders_expires_at_open_gtd",
            "expires_at",
            postgresql_where=text(
                "time_in_force = 'gtd' AND status IN ('open', 'partially_filled')"
            ),
        ),
    )

    product_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("market_products.id", ondelete="RESTRICT"), nullable=False
    )
    organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT"), nullable=False, index=True
    )
    side: Mapped[Side] = mapped_column(String(4), nullable=False)
    type: Mapped[OrderType] = mapped_column(String(10), nullable=False)
    price: Mapped[int | None] = mapped_column(BigInteger)
    quantity: Mapped[int] = mapped_column(BigInteger, nullable=False)
    filled_quantity: Mapped[int] = mapped_column(BigInteger, nullable=False)
    filled_amount: Mapped[int] = mapped_column(BigInteger, nullable=False)  # Σ price × quantity
    status: Mapped[OrderStatus] = mapped_column(String(20), nullable=False)
    cancel_reason: Mapped[str | None] = mapped_column(String(20))
    time_in_force: Mapped[OrderTimeInForce] = mapped_column(String(3), nullable=False)
    post_only: Mapped[bool] = mapped_column(Boolean, nullable=False)
    # GTD only: when the order leaves the book (status expired), within a minute of this time.
    expires_at: Mapped[datetime | None] = mapped_column()
    client_order_id: Mapped[str | None] = mapped_column(String(64))
    # A buy order's cash hold (limit × quantity, or band high × quantity for a market buy).
    cash_hold_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("ledger_holds.id", ondelete="RESTRICT"), unique=True
    )
    # A sell order's credit hold (offsets.hold_credits on the product's batch).
    credit_hold_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("ledger_holds.id", ondelete="RESTRICT"), unique=True
    )
    sequence: Mapped[int] = mapped_column(BigInteger, Identity(), unique=True, nullable=False)


class MarketTrade(IdMixin, Base):
    __tablename__ = "market_trades"
    __table_args__ = (
        CheckConstraint("price > 0", name="price"),
        CheckConstraint("quantity > 0", name="quantity"),
        CheckConstraint(values_in("taker_side", Side), name="taker_side"),
        CheckConstraint("buyer_organization_id <> seller_organization_id", name="self_trade"),
    )

    product_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("market_products.id", ondelete="RESTRICT"), nullable=False, index=True
    )
    batch_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("offset_batches.id", ondelete="RESTRICT"), nullable=False
    )
    price: Mapped[int] = mapped_column(BigInteger, nullable=False)
    quantity: Mapped[int] = mapped_column(BigInteger, nullable=False)
    taker_side: Mapped[Side] = mapped_column(String(4), nullable=False)
    buy_order_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("market_orders.id", ondelete="RESTRICT"), nullable=False, index=True
    )
    sell_order_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("market_orders.id", ondelete="RESTRICT"), nullable=False, index=True
    )
    buyer_organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT"), nullable=False, index=True
    )
    seller_organization_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("organizations.id", ondelete="RESTRICT"), nullable=False, index=True
    )
    serial_ranges: Mapped[list[list[int]]] = mapped_column(JSONB, nullable=False)
    executed_at: Mapped[datetime] = mapped_column(default=utc_now, nullable=False)
