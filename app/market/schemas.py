from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from app.core.time import utc_now
from app.market.matching import OrderType, Side
from app.market.models import OrderStatus, OrderTimeInForce

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


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProductCreate(Strict):
    code: ProductCode = Field(description='Unique code, e.g. "JCR-FOREST-2024".')
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    batch_id: uuid.UUID | None = Field(
        default=None,
        description="The one batch whose credits the product trades (required for now: "
        "category products come in a later release).",
    )
    reference_price: Price | None = Field(
        default=None, description="JPY per t-CO2e: the centre of the price band until a trade."
    )
    band_bps: Annotated[int, Field(gt=0, le=10_000, strict=True)] = Field(
        default=1000, description="Price band half-width in basis points (1000 = ±10%)."
    )


class ProductRead(BaseModel):
    id: uuid.UUID
    code: str
    name: str
    batch_id: uuid.UUID
    reference_price: int | None
    last_trade_price: int | None
    band_bps: int
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
    fee: int = Field(description="JPY; no fee is charged in this release.")
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
