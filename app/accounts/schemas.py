from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from app.accounts.models import OrganizationKind, OrganizationStatus, Scope
from app.accounts.validation import is_valid_corporate_number, is_valid_prefecture
from app.core.validation import PlainText

Name = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), PlainText
]
GroupName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100), PlainText
]


class OrganizationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    kind: OrganizationKind
    prefecture: str | None = Field(
        None, description="JIS X 0401 code, two digits: `13` is Tokyo.", examples=["13"]
    )
    corporate_number: str | None = Field(
        None, description="法人番号: 13 digits, check digit verified.", examples=["7000012050002"]
    )
    group: GroupName | None = Field(
        None, description="Corporate group: bidding caps apply across a group."
    )

    @field_validator("prefecture")
    @classmethod
    def _prefecture(cls, value: str | None) -> str | None:
        if value is not None and not is_valid_prefecture(value):
            raise ValueError("must be a JIS prefecture code from 01 to 47, two digits")
        return value

    @field_validator("corporate_number")
    @classmethod
    def _corporate_number(cls, value: str | None) -> str | None:
        if value is not None and not is_valid_corporate_number(value):
            raise ValueError("must be 13 digits with a valid check digit")
        return value


class OrganizationRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    kind: OrganizationKind
    prefecture: str | None
    corporate_number: str | None
    group: str | None
    status: OrganizationStatus
    created_at: datetime


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100), PlainText
    ]
    scopes: list[Scope] = Field(min_length=1, max_length=len(Scope))


class ApiKeyRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    organization_id: uuid.UUID
    name: str
    prefix: str
    scopes: list[Scope]
    created_at: datetime
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyRead):
    key: str = Field(description="The secret key. Shown once: it is stored only as a hash.")


class MeKey(BaseModel):
    id: str
    scopes: list[Scope]


class MeRead(BaseModel):
    organization: OrganizationRead | None
    api_key: MeKey
