from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from app.ledger.models import AccountKind
from app.ledger.posting import MAX_AMOUNT

Amount = Annotated[int, Field(gt=0, le=MAX_AMOUNT, strict=True)]


class CashBalance(BaseModel):
    available: int
    held: int


class CreditBalance(BaseModel):
    batch_id: str
    available: int
    held: int


class BalancesRead(BaseModel):
    cash: CashBalance
    credits: list[CreditBalance]


class AccountRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    asset: str
    kind: AccountKind
    balance: int
    is_non_negative: bool
    created_at: datetime


class PostingRead(BaseModel):
    id: str
    entry_id: uuid.UUID
    entry_kind: str
    amount: int
    balance_after: int = Field(description="The account's balance after this posting.")
    reference: str | None
    created_at: datetime


class DepositCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    organization_id: uuid.UUID
    amount: Amount = Field(description="Yen received, a positive integer.")
    reference: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)
    ] = Field(description="The bank transfer's reference; unique per organisation.")


class DepositRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    organization_id: uuid.UUID
    amount: int
    reference: str
    status: str
    entry_id: uuid.UUID
    created_at: datetime
