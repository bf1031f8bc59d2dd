"""``tanso claims verify``: a published claim checks out offline with only the public key,
and any alteration (document, signed string, signature, key) is caught."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from app.cli import app as cli
from tests.factories import create_org
from tests.offsets.helpers import new_batch, retired


async def _published(client: httpx.AsyncClient) -> tuple[dict[str, Any], str]:
    buyer = await create_org(client, kind="company")
    issued = await new_batch(client, buyer, 5)
    retirement = await retired(client, buyer, issued.batch_id, 2)
    r = await client.post(
        "/v1/claims",
        json={
            "claim_type": "event",
            "subject": {"name": "Tanso meetup 2026"},
            "footprint_g": 1_500_000,
            "period_start": "2026-11-01",
            "period_end": "2026-11-30",
            "retirement_ids": [retirement["id"]],
        },
        headers=buyer.headers,
    )
    assert r.status_code == 201, r.text
    published = (await client.get(f"/v1/public/claims/{r.json()['code']}")).json()
    keys = (await client.get("/v1/public/keys")).text
    return published, keys


def _verify(tmp_path: Path, published: dict[str, Any], keys: str) -> tuple[int, str]:
    claim_file, keys_file = tmp_path / "claim.json", tmp_path / "keys.json"
    claim_file.write_text(json.dumps(published, ensure_ascii=False), encoding="utf-8")
    keys_file.write_text(keys, encoding="utf-8")
    result = CliRunner().invoke(
        cli, ["claims", "verify", str(claim_file), "--keys", str(keys_file)]
    )
    return result.exit_code, result.output


async def test_a_published_claim_verifies(client: httpx.AsyncClient, tmp_path: Path) -> None:
    published, keys = await _published(client)
    code, output = _verify(tmp_path, published, keys)
    assert code == 0, output
    assert "VALID" in output
    assert "NOT VALID" not in output


async def test_a_single_raw_key_is_enough(client: httpx.AsyncClient, tmp_path: Path) -> None:
    published, keys = await _published(client)
    raw = json.loads(keys)[0]["public_key"]
    assert _verify(tmp_path, published, raw)[0] == 0


@pytest.mark.parametrize(
    "tamper",
    ["document", "canonical", "signature", "key_id"],
)
async def test_any_alteration_fails(client: httpx.AsyncClient, tmp_path: Path, tamper: str) -> None:
    published, keys = await _published(client)
    if tamper == "document":
        published["document"]["footprint_g"] += 1
    elif tamper == "canonical":
        altered = dict(published["document"], footprint_g=published["document"]["footprint_g"] + 1)
        published["canonical"] = json.dumps(
            altered, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        published["document"] = altered
    elif tamper == "signature":
        signature = published["signature"]
        published["signature"] = ("A" if signature[0] != "A" else "B") + signature[1:]
    else:
        published["key_id"] = "0" * 16
    code, output = _verify(tmp_path, published, keys)
    assert code == 1, output
    assert "NOT VALID" in output


def test_unreadable_inputs_exit_2(tmp_path: Path) -> None:
    (tmp_path / "claim.json").write_text("not json")
    (tmp_path / "keys.json").write_text("[]")
    result = CliRunner().invoke(
        cli,
        ["claims", "verify", str(tmp_path / "claim.json"), "--keys", str(tmp_path / "keys.json")],
    )
    assert result.exit_code == 2
