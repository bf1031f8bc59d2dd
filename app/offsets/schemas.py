from __future__ import annotations

import re
import uuid
from datetime import date, datetime
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from app.accounts.validation import is_valid_prefecture
from app.offsets.models import Category, ClaimStatus, ClaimType, Purpose

MAX_QUANTITY = 1_000_000_000  # credits in one operation
MAX_GRAMS = 10**15

Quantity = Annotated[int, Field(gt=0, le=MAX_QUANTITY, strict=True)]
Grams = Annotated[int, Field(gt=0, le=MAX_GRAMS, strict=True)]
Text200 = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
SerialRange = Annotated[list[int], Field(min_length=2, max_length=2)]

METHODOLOGY = re.compile(r"^(EN-S|EN-R|FO|AG|IP|WA)-[0-9]{3}$")
LABEL = re.compile(r"^[a-z0-9_]{1,40}$")
KNOWN_LABELS = {
    "corsia_eligible": "Eligible for CORSIA offsetting (if the scheme is approved for the period).",
    "ccp_approved": "ICVCM Core Carbon Principles label.",
    "local_government": "Issued from a municipal or prefectural project.",
    "regional_scheme": "From a prefecture's approved regional J-Credit scheme (地域版J-クレジット).",
    "removal": "A removal credit (e.g. forest absorption), not an avoidance credit.",
    "jcm": "Joint Crediting Mechanism.",
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProjectCreate(Strict):
    name: Text200
    owner_organization_id: uuid.UUID
    methodology: str = Field(description="J-Credit methodology code: EN-S-001, EN-R-002, FO-001, …")
    category: Category
    prefecture: str = Field(description="JIS code of the project's location, two digits.")

    @field_validator("methodology")
    @classmethod
    def _methodology(cls, value: str) -> str:
        value = value.strip().upper()
        if not METHODOLOGY.match(value):
            raise ValueError(
                "must be a J-Credit methodology code such as EN-S-001, EN-R-002, FO-001"
            )
        return value

    @field_validator("prefecture")
    @classmethod
    def _prefecture(cls, value: str) -> str:
        if not is_valid_prefecture(value):
            raise ValueError("must be a JIS prefecture code from 01 to 47, two digits")
        return value


class ProjectRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    code: str = Field(description="Registry project code used in serial display forms.")
    name: str
    owner_organization_id: uuid.UUID
    methodology: str
    category: Category
    prefecture: str
    created_at: datetime


class IssuanceCreate(Strict):
    project_id: uuid.UUID
    holder_organization_id: uuid.UUID
    quantity: Quantity
    monitoring_period_start: date
    monitoring_period_end: date
    labels: list[str] = Field(default_factory=list, max_length=20)

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: list[str]) -> list[str]:
        for label in value:
            if not LABEL.match(label):
                raise ValueError("labels are 1-40 characters of a-z, 0-9 and _")
        return sorted(set(value))

    @model_validator(mode="after")
    def _period(self) -> IssuanceCreate:
        if self.monitoring_period_end < self.monitoring_period_start:
            raise ValueError("monitoring_period_end is before monitoring_period_start")
        return self


class BatchRead(BaseModel):
    id: uuid.UUID
    project_id: uuid.UUID
    project_code: str
    category: Category
    prefecture: str
    vintage: int = Field(description="Fiscal year (April–March) of the monitoring period's end.")
    quantity: int
    monitoring_period_start: date
    monitoring_period_end: date
    serial_start: int
    serial_end: int
    serial_display: str
    labels: list[str]
    issued_at: datetime


class HoldingRead(BaseModel):
    batch_id: uuid.UUID
    project_code: str
    category: Category
    vintage: int
    labels: list[str]
    available: int
    held: int
    serial_ranges: list[SerialRange] = Field(description="Active (available) serial ranges.")
    held_serial_ranges: list[SerialRange]
    serial_display: list[str]


class TransferCreate(Strict):
    to_organization_id: uuid.UUID
    batch_id: uuid.UUID
    quantity: Quantity


class TransferRead(BaseModel):
    id: uuid.UUID
    batch_id: uuid.UUID
    from_organization_id: uuid.UUID
    to_organization_id: uuid.UUID
    quantity: int
    serial_ranges: list[SerialRange]
    serial_display: list[str]
    created_at: datetime


class RetirementCreate(Strict):
    batch_id: uuid.UUID
    quantity: Quantity
    purpose: Purpose
    purpose_detail: Annotated[
        str | None, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)
    ] = None
    beneficiary_name: Text200
    public: bool = True


class RetirementRead(BaseModel):
    id: uuid.UUID
    code: str
    batch_id: uuid.UUID
    project_code: str
    category: Category
    vintage: int
    quantity: int
    serial_ranges: list[SerialRange]
    serial_display: list[str]
    purpose: Purpose
    purpose_detail: str | None
    beneficiary_name: str
    public: bool
    claimed_g: int = Field(description="Grams already backing claims or offset pools.")
    retired_at: datetime
    certificate_url: str
    verification_url: str


class PublicRetirement(BaseModel):
    code: str
    batch_id: uuid.UUID
    project_code: str
    project_name: str
    methodology: str
    category: Category
    vintage: int
    quantity: int
    serial_ranges: list[SerialRange]
    serial_display: list[str]
    purpose: Purpose
    purpose_detail: str | None
    beneficiary_name: str
    retired_by: str
    retired_at: datetime
    certificate_url: str


class ClaimSubject(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: Text200
    description: Annotated[str | None, StringConstraints(max_length=2000)] = None
    unit: Annotated[str | None, StringConstraints(max_length=100)] = None

    @model_validator(mode="after")
    def _no_floats(self) -> ClaimSubject:
        def walk(value: Any) -> None:
            if isinstance(value, float):
                raise ValueError("numbers in a claim subject must be integers")
            if isinstance(value, dict):
                for v in value.values():
                    walk(v)
            if isinstance(value, list):
                for v in value:
                    walk(v)

        walk(self.model_extra or {})
        if len(str(self.model_dump())) > 10_000:
            raise ValueError("the subject is too large")
        return self


class ClaimCreate(Strict):
    claim_type: ClaimType
    subject: ClaimSubject
    footprint_g: Grams
    period_start: date
    period_end: date
    retirement_ids: list[uuid.UUID] = Field(min_length=1, max_length=100)

    @model_validator(mode="after")
    def _period(self) -> ClaimCreate:
        if self.period_end < self.period_start:
            raise ValueError("period_end is before period_start")
        if len(set(self.retirement_ids)) != len(self.retirement_ids):
            raise ValueError("retirement_ids has duplicates")
        return self


class ClaimRetirement(BaseModel):
    retirement_id: uuid.UUID
    code: str
    grams: int


class ClaimRead(BaseModel):
    id: uuid.UUID
    code: str
    status: ClaimStatus
    claim_type: ClaimType
    subject: dict[str, Any]
    footprint_g: int
    covered_g: int
    period_start: date | None
    period_end: date | None
    retirements: list[ClaimRetirement]
    pool_id: uuid.UUID | None = None
    reference: str | None = None
    revoked_reason: str | None = None
    created_at: datetime
    verification_url: str


class ClaimRevoke(Strict):
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]


class PublicClaim(BaseModel):
    code: str
    status: ClaimStatus
    revoked_reason: str | None
    document: dict[str, Any] = Field(description="The signed document.")
    canonical: str = Field(
        description="The exact bytes signed (UTF-8): canonical JSON of `document`."
    )
    signature: str = Field(description="Ed25519 signature of `canonical`, base64url.")
    key_id: str
    algorithm: str
    public_key_url: str


class PublicKeyRead(BaseModel):
    key_id: str
    algorithm: str
    public_key: str = Field(description="Raw 32-byte public key, base64url.")
    public_key_pem: str


class PoolCreate(Strict):
    name: Text200
    claim_type: ClaimType = ClaimType.product
    subject: ClaimSubject
    retirement_ids: list[uuid.UUID] = Field(default_factory=list, max_length=100)
    low_balance_g: Annotated[int, Field(ge=0, le=MAX_GRAMS, strict=True)] | None = None


class PoolFund(Strict):
    retirement_ids: list[uuid.UUID] = Field(min_length=1, max_length=100)


class PoolRead(BaseModel):
    id: uuid.UUID
    code: str
    name: str
    claim_type: ClaimType
    subject: dict[str, Any]
    total_g: int
    remaining_g: int
    drawn_g: int
    low_balance_g: int | None
    retirements: list[ClaimRetirement]
    created_at: datetime


class UnitClaimCreate(Strict):
    grams: Grams
    reference: Text200 = Field(description="Your reference for this unit, e.g. an order number.")
    notify_below_g: Annotated[int, Field(ge=0, le=MAX_GRAMS, strict=True)] | None = Field(
        None, description="If the pool's remaining grams fall below this, say so in the answer."
    )


class UnitClaimRead(BaseModel):
    id: uuid.UUID
    code: str
    pool_id: uuid.UUID
    grams: int
    reference: str
    pool_remaining_g: int
    low_balance: bool
    verification_url: str
    created_at: datetime


class GoalCreate(Strict):
    fiscal_year: Annotated[int, Field(ge=2000, le=2100, strict=True)]
    target_tonnes: Quantity
    local_share_target_pct: Annotated[int, Field(ge=0, le=100, strict=True)] = 0


class GoalRead(BaseModel):
    id: uuid.UUID
    organization_id: uuid.UUID
    fiscal_year: int
    target_tonnes: int
    local_share_target_pct: int
    retired_tonnes: int
    local_tonnes: int
    progress_pct: int = Field(description="Retired tonnes as a whole percentage of the target.")
    local_share_pct: int = Field(
        description="Share of retired tonnes from credits issued in the municipality's prefecture, whole percent."
    )
    target_met: bool
    local_share_met: bool
    retirements: int
