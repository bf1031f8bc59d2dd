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
    SmallInteger,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.core.time import utc_now
from app.db.base import Base, IdMixin, StringEnum, TimestampMixin, values_in
from app.market.matching import OrderType, Side
from app.offsets.models import Category


class OrderStatus(StrEnum):
    open = "open"
    partially_filled = "partially_filled"
    filled = "filled"
    cancelled = "cancelled"
    expired = "expired"  # a GTD order whose ``expires_at`` passed (``app.market.tasks``)


OPEN_STATUSES = (OrderStatus.open, OrderStatus.partially_filled)


class TradingMode(StrEnum):
    """How a product trades: matched on arrival, or collected and uncrossed at its calls."""

    continuous = "continuous"
    call = "call"  # orders rest without matching; they trade at the product's call_times
    # Orders collect each day until the opening call (its one call time), then match on arrival.
    call_then_continuous = "call_then_continuous"


class OrderTimeInForce(StrEnum):
    """The times in force the API accepts; a GTD order rests like GTC until ``expires_at``."""

    gtc = "gtc"
    ioc = "ioc"
    fok = "fok"
    gtd = "gtd"


MAX_FEE_BPS = 1000  # 10%: a fee never takes more than a tenth of a fill


class Product(IdMixin, TimestampMixin, Base):
    """A standard contract: the credits of one batch, or a category product (any batch of one
    category, optionally within a vintage window and carrying every required label).

    Fees are charged on each fill's amount (price × quantity, JPY), in basis points, to the
    maker and to the taker (see ``app.market.service`` for who pays and the rounding).
    """

    __tablename__ = "market_products"
    __table_args__ = (
        CheckConstraint("code ~ '^[A-Z0-9][A-Z0-9-]{1,39}$'", name="code"),
        CheckConstraint("reference_price > 0", name="reference_price"),
        CheckConstraint("last_trade_price > 0", name="last_trade_price"),
        CheckConstraint("band_bps > 0 AND band_bps <= 10000", name="band_bps"),
        CheckConstraint(values_in("category", Category), name="category"),
        # Exactly one source of credits; the vintage window and labels refine a category only.
        CheckConstraint("(batch_id IS NULL) <> (category IS NULL)", name="source"),
        CheckConstraint(
            "category IS NOT NULL OR"
            " (vintage_min IS NULL AND vintage_max IS NULL AND cardinality(labels) = 0)",
            name="category_filters",
        ),
        CheckConstraint("vintage_min <= vintage_max", name="vintage_window"),
        CheckConstraint(
            f"maker_fee_bps >= 0 AND maker_fee_bps <= {MAX_FEE_BPS}", name="maker_fee_bps"
        ),
        CheckConstraint(
            f"taker_fee_bps >= 0 AND taker_fee_bps <= {MAX_FEE_BPS}", name="taker_fee_bps"
        ),
        CheckConstraint(values_in("trading_mode", TradingMode), name="trading_mode"),
        CheckConstraint(
            "(trading_mode = 'continuous') = (jsonb_array_length(call_times) = 0)",
            name="call_times",
        ),
        CheckConstraint(
            "trading_mode <> 'call_then_continuous' OR jsonb_array_length(call_times) = 1",
            name="opening_call",
        ),
    )

    code: Mapped[str] = mapped_column(String(40), nullable=False, unique=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    # A batch product trades the credits of this one batch ...
    batch_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("offset_batches.id", ondelete="RESTRICT"), index=True
    )
    # ... a category product those of any batch of this category, vintage window and labels.
    category: Mapped[Category | None] = mapped_column(StringEnum(Category, 20))
    vintage_min: Mapped[int | None] = mapped_column(SmallInteger)
    vintage_max: Mapped[int | None] = mapped_column(SmallInteger)
    labels: Mapped[list[str]] = mapped_column(
        ARRAY(String(40)), nullable=False, server_default=text("'{}'")
    )
    reference_price: Mapped[int | None] = mapped_column(BigInteger)
    last_trade_price: Mapped[int | None] = mapped_column(BigInteger)
    band_bps: Mapped[int] = mapped_column(Integer, nullable=False)
    maker_fee_bps: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    taker_fee_bps: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    trading_mode: Mapped[TradingMode] = mapped_column(
        String(20), nullable=False, default=TradingMode.continuous
    )
    # A call product's daily call times, "HH:MM" in Asia/Tokyo, ascending ([] if continuous).
    call_times: Mapped[list[str]] = mapped_column(JSONB, nullable=False, default=list)


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
        # A sell order's credit holds are rows of ``market_order_credit_holds``.
        CheckConstraint("(side = 'buy') = (cash_hold_id IS NOT NULL)", name="holds"),
        CheckConstraint("(time_in_force = 'gtd') = (expires_at IS NOT NULL)", name="expires_at"),
        UniqueConstraint("organization_id", "client_order_id"),
        # A buy's cash hold is its own; a sell has none (its credit holds are rows of their
        # own), and a partial index writes nothing for it (migration 0030).
        Index(
            "market_orders_cash_hold_id_key",
            "cash_hold_id",
            unique=True,
            postgresql_where=text("cash_hold_id IS NOT NULL"),
        ),
        # The book by side and price (migration 0028): a group's lock call reads two ranges
        # of it (``app.market.reach``), however deep the book is.
        Index(
            "ix_market_orders_book",
            "product_id",
            "side",
            "price",
            postgresql_where=text("status = 'open' OR status = 'partially_filled'"),
        ),
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
        ForeignKey("ledger_holds.id", ondelete="RESTRICT")
    )
    sequence: Mapped[int] = mapped_column(BigInteger, Identity(), unique=True, nullable=False)


class MarketOrderCreditHold(Base):
    """One credit hold of a sell order (``offsets.hold_credits`` on one batch).

    A batch product's sell order has one; a category product's may have several, taken from the
    seller's eligible batches oldest vintage first (then by batch id). Fills deliver from them in
    ``position`` order; ``quantity`` is what was held (the ledger hold's ``remaining`` is what is
    left of it).
    """

    __tablename__ = "market_order_credit_holds"
    __table_args__ = (
        CheckConstraint("quantity > 0", name="quantity"),
        CheckConstraint("position >= 0", name="position"),
    )

    order_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("market_orders.id", ondelete="RESTRICT"), primary_key=True
    )
    position: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    batch_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("offset_batches.id", ondelete="RESTRICT"), nullable=False
    )
    hold_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("ledger_holds.id", ondelete="RESTRICT"), nullable=False, unique=True
    )
    quantity: Mapped[int] = mapped_column(BigInteger, nullable=False)


class MarketTrade(IdMixin, Base):
    __tablename__ = "market_trades"
    __table_args__ = (
        CheckConstraint("price > 0", name="price"),
        CheckConstraint("quantity > 0", name="quantity"),
        CheckConstraint(values_in("taker_side", Side), name="taker_side"),
        CheckConstraint("buyer_organization_id <> seller_organization_id", name="self_trade"),
        CheckConstraint("buyer_fee >= 0 AND seller_fee >= 0", name="fees"),
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
    # JPY paid to the platform's fee account: by the buyer on top of the amount, by the seller
    # out of its proceeds.
    buyer_fee: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default=text("0"))
    seller_fee: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default=text("0"))
    executed_at: Mapped[datetime] = mapped_column(default=utc_now, nullable=False)


class MarketCallRun(IdMixin, Base):
    """One call auction of one product, recorded in the transaction that ran it.

    UNIQUE (product_id, scheduled_at) makes each scheduled call run exactly once: a second
    worker (or a restart) finds the row under the product lock and does nothing. A manual run
    (``trigger`` manual) is scheduled at the time it was asked for.
    """

    __tablename__ = "market_call_runs"
    __table_args__ = (
        UniqueConstraint("product_id", "scheduled_at"),
        CheckConstraint("trigger IN ('scheduled', 'manual')", name="trigger"),
        CheckConstraint("price > 0", name="price"),
        CheckConstraint("volume >= 0 AND trades >= 0", name="volume"),
        CheckConstraint("(price IS NULL) = (volume = 0)", name="price_if_volume"),
    )

    product_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("market_products.id", ondelete="RESTRICT"), nullable=False
    )
    scheduled_at: Mapped[datetime] = mapped_column(nullable=False)
    trigger: Mapped[str] = mapped_column(String(10), nullable=False)
    price: Mapped[int | None] = mapped_column(BigInteger)  # None when nothing traded
    volume: Mapped[int] = mapped_column(BigInteger, nullable=False)
    surplus: Mapped[int] = mapped_column(BigInteger, nullable=False)  # demand − supply at price
    trades: Mapped[int] = mapped_column(Integer, nullable=False)
    ran_at: Mapped[datetime] = mapped_column(default=utc_now, nullable=False)
