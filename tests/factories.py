"""Test data made through the public API (so every factory exercises the real code path)."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import count
from typing import Any

import httpx

from tests.conftest import ADMIN_KEY

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
ALL_MEMBER_SCOPES = ["read", "trade", "bid", "retire", "transfer", "keys"]
_seq = count(1)


@dataclass
class Org:
    id: str
    key: str
    key_id: str
    body: dict[str, Any]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


async def create_org(
    client: httpx.AsyncClient,
    *,
    kind: str = "company",
    scopes: list[str] | None = None,
    **fields: Any,
) -> Org:
    body = {"name": f"Org {next(_seq)}", "kind": kind, **fields}
    r = await client.post("/v1/organizations", json=body, headers=ADMIN)
    assert r.status_code == 201, r.text
    org = r.json()
    r = await client.post(
        f"/v1/organizations/{org['id']}/api-keys",
        json={"name": "test", "scopes": scopes or ALL_MEMBER_SCOPES},
        headers=ADMIN,
    )
    assert r.status_code == 201, r.text
    return Org(id=org["id"], key=r.json()["key"], key_id=r.json()["id"], body=org)


async def deposit(
    client: httpx.AsyncClient, org: Org, amount: int, reference: str | None = None
) -> dict[str, Any]:
    r = await client.post(
        "/v1/deposits",
        json={
            "organization_id": org.id,
            "amount": amount,
            "reference": reference or f"ref-{next(_seq)}",
        },
        headers=ADMIN,
    )
    assert r.status_code == 201, r.text
    return dict(r.json())
