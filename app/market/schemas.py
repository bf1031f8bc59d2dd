from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from app.core.time import utc_now
from app.market.matching import OrderType, Side
from app.market.models import MAX_FEE_BPS, OrderStatus, OrderTimeInForce, TradingMode
from app.offsets.models import Category

MAX_QUANTITY = 1_000_000_000  # credits
MAX_PRICE = 1_000_000_000  # JPY per credit (tick ¥1); price × quantity stays within BIGINT

Quantity = Annotated[int, Field(gt=0, le=MAX_QUANTITY, strict=True)]
Price = Annotated[int, Field(gt=0, le=MAX_PRICE, strict=True)]
ProductCode = Annotated[
    str, StringConstraints(strip_whitespace=True, pattern=r"^[A-Z0-9][A-Z0-9-]{1,39}$")
]
ClientOrderId = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")
]
Vintage = Annotated[int, Field(ge=2000, le=2100, strict=True)]
Label = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,40}$", strict=True)]
FeeBps = Annotated[int, Field(ge=0, le=MAX_FEE_BPS, strict=True)]
CallTime = Annotated[
    str, StringConstraints(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", strict=True)
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProductCreate(Strict):
    code: ProductCode = Field(description='Unique code, e.g. "JCR-FOREST-2024".')
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    batch_id: uuid.UUID | None = Field(
        default=None,
        description="A batch product: the one batch whose credits it trades. Exactly one of "
        "batch_id and category.",
    )
    category: Category | None = Field(
        default=None,
        description="A category product (a standard contract): sellers deliver credits of any "
        "batch of this category (within the vintage window, with every label), oldest vintage "
        "first. Exactly one of batch_id and category.",
    )
    vintage_min: Vintage | None = Field(
        default=None, description="Category products: the oldest eligible vintage (fiscal year)."
    )
    vintage_max: Vintage | None = Field(
        default=None, description="Category products: the newest eligible vintage (fiscal year)."
    )
    labels: list[Label] = Field(
        default_factory=list,
        max_length=20,
        description="Category products: labels an eligible batch must all carry (e.g. "
        '"removal"); stored sorted, without duplicates.',
    )
    reference_price: Price | None = Field(
        default=None, description="JPY per t-CO2e: the centre of the price band until a trade."
    )
    band_bps: Annotated[int, Field(gt=0, le=10_000, strict=True)] = Field(
        default=1000, description="Price band half-width in basis points (1000 = ±10%)."
    )
    maker_fee_bps: FeeBps = Field(
        default=0,
        description="Fee of the resting side of each fill, in basis points of its amount "
        "(price × quantity, JPY; rounded down to the yen).",
    )
    taker_fee_bps: FeeBps = Field(
        default=0, description="Fee of the incoming side of each fill, as maker_fee_bps."
    )
    trading_mode: TradingMode = Field(
        default=TradingMode.continuous,
        description="continuous: orders match on arrival. call: orders collect without "
        "matching and trade only at the call_times, uncrossed at one price (itayose). "
        "call_then_continuous: each day (Asia/Tokyo) orders collect until the opening call "
        "(its one call time), then match on arrival until midnight.",
    )
    call_times: list[CallTime] = Field(
        default_factory=list,
        max_length=24,
        description='Required for (and only for) a call product: daily call times, "HH:MM" '
        'in Asia/Tokyo, e.g. ["11:30", "15:00"] (stored sorted, without duplicates).',
    )

    @model_validator(mode="after")
    def _call_schedule(self) -> ProductCreate:
        self.call_times = sorted(set(self.call_times))
        if self.trading_mode == TradingMode.continuous and self.call_times:
            raise ValueError("call_times is only valid for a call product")
        if self.trading_mode == TradingMode.call and not self.call_times:
            raise ValueError("call_times is required for a call product")
        if self.trading_mode == TradingMode.call_then_continuous and len(self.call_times) != 1:
            raise ValueError(
                "call_times is the one daily opening call of a call_then_continuous product"
            )
        return self

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: list[str]) -> list[str]:
        return sorted(set(value))


class ProductRead(BaseModel):
    id: uuid.UUID
    code: str
    name: str
    batch_id: uuid.UUID | None = Field(description="A batch product's batch (else null).")
    category: Category | None = Field(description="A category product's category (else null).")
    vintage_min: int | None
    vintage_max: int | None
    labels: list[str]
    reference_price: int | None
    last_trade_price: int | None
    band_bps: int
    maker_fee_bps: int
    taker_fee_bps: int
    trading_mode: TradingMode
    call_times: list[str] = Field(description='"HH:MM" in Asia/Tokyo ([] if continuous).')
    next_call_at: datetime | None = Field(description="The next call (null if continuous).")
    created_at: datetime


class OrderCreate(Strict):
    product: ProductCode
    side: Side
    type: OrderType = OrderType.LIMIT
    price: Price | None = Field(
        default=None, description="Limit price in whole JPY per t-CO2e; none for market orders."
    )
    quantity: Quantity
    time_in_force: OrderTimeInForce = OrderTimeInForce.gtc
    expires_at: AwareDatetime | None = Field(
        default=None,
        description="Required for (and only for) time_in_force gtd: a future time at which the "
        "order leaves the book with status expired (checked every minute, so within a minute "
        "after it).",
    )
    post_only: bool = Field(default=False, strict=True)
    client_order_id: ClientOrderId | None = Field(
        default=None, description="Unique per organisation."
    )

    @model_validator(mode="after")
    def _consistent(self) -> OrderCreate:
        if self.type == OrderType.LIMIT and self.price is None:
            raise ValueError("price is required for a limit order")
        if self.type == OrderType.MARKET and self.price is not None:
            raise ValueError("a market order has no price")
        resting = (OrderTimeInForce.gtc, OrderTimeInForce.gtd)
        if self.post_only and (self.type == OrderType.MARKET or self.time_in_force not in resting):
            raise ValueError("post_only is only valid for gtc or gtd limit orders")
        if self.time_in_force == OrderTimeInForce.gtd:
            if self.type == OrderType.MARKET:
                raise ValueError("a market order cannot be gtd")
            if self.expires_at is None:
                raise ValueError("expires_at is required for a gtd order")
            if self.expires_at <= utc_now():
                raise ValueError("expires_at must be in the future")
        elif self.expires_at is not None:
            raise ValueError("expires_at is only valid for a gtd order")
        return self


class OrderAmend(Strict):
    """A new total quantity and/or price: a reduced quantity at the same price keeps the
    order's time priority, any other change loses it (a new sequence)."""

    quantity: Quantity | None = Field(
        default=None,
        description="The new total quantity (filled included): above filled_quantity.",
    )
    price: Price | None = Field(default=None, description="The new limit price.")

    @model_validator(mode="after")
    def _something(self) -> OrderAmend:
        if self.quantity is None and self.price is None:
            raise ValueError("quantity or price is required")
        return self


class TradeRead(BaseModel):
    """One fill, as seen by one of its two parties."""

    id: uuid.UUID
    order_id: uuid.UUID
    product: str
    side: Side
    liquidity: str = Field(description="maker or taker")
    price: int
    quantity: int
    amount: int = Field(description="price × quantity, JPY.")
    fee: int = Field(
        description="JPY the caller paid the platform for this fill: a buyer on top of amount, "
        "a seller out of it (its proceeds are amount − fee)."
    )
    batch_id: uuid.UUID
    serial_ranges: list[list[int]]
    executed_at: datetime


class OrderRead(BaseModel):
    id: uuid.UUID
    product: str
    side: Side
    type: OrderType
    price: int | None
    quantity: int
    filled_quantity: int
    remaining_quantity: int = Field(description="Open on the book (0 once filled or cancelled).")
    filled_amount: int = Field(description="Σ price × quantity of the fills, JPY.")
    average_price: float | None
    status: OrderStatus
    cancel_reason: str | None
    time_in_force: OrderTimeInForce
    expires_at: datetime | None
    post_only: bool
    client_order_id: str | None
    sequence: int
    created_at: datetime
    updated_at: datetime
    trades: list[TradeRead]


class LevelRead(BaseModel):
    price: int
    quantity: int
    orders: int


class BookRead(BaseModel):
    product: str
    bids: list[LevelRead]
    asks: list[LevelRead]


class PublicTradeRead(BaseModel):
    id: uuid.UUID
    price: int
    quantity: int
    taker_side: Side
    executed_at: datetime


class CandleInterval(StrEnum):
    m1 = "1m"
    m5 = "5m"
    m15 = "15m"
    h1 = "1h"
    d1 = "1d"


class CandleRead(BaseModel):
    """One interval's trades: open/close are the first/last by (executed_at, id)."""

    start: datetime = Field(description="Start of the interval (inclusive).")
    open: int
    high: int
    low: int
    close: int
    volume: int = Field(description="Σ quantity, t-CO2e.")
    turnover: int = Field(description="Σ price × quantity, JPY.")
    trades: int


class CandlesRead(BaseModel):
    product: str
    interval: CandleInterval
    candles: list[CandleRead] = Field(description="Oldest first; intervals without trades omitted.")


class CallRunRead(BaseModel):
    """One call auction that ran (scheduled or asked for by an admin)."""

    product: str
    scheduled_at: datetime
    trigger: str = Field(description="scheduled or manual")
    price: int | None = Field(description="The uncross price (null if nothing traded).")
    volume: int = Field(description="t-CO2e traded at the price.")
    imbalance: int = Field(
        description="Buy minus sell quantity executable at the price (> 0: buyers left over)."
    )
    trades: int
    ran_at: datetime


class IndicativeRead(BaseModel):
    """What the book would uncross at now (as the TSE publishes indicative prices)."""

    product: str
    trading_mode: TradingMode
    price: int | None = Field(description="Null if the book does not cross.")
    volume: int
    demand: int = Field(description="Buy quantity executable at the price.")
    supply: int = Field(description="Sell quantity executable at the price.")
    imbalance: int = Field(description="demand − supply.")
    reference_price: int | None = Field(
        description="The tie-break reference: the last trade price, else the reference price."
    )
    next_call_at: datetime | None
