"""Claims through the API: coverage, no double counting, revocation, signatures, validation."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from app.offsets.signing import b64url_decode, canonical_json, verify
from tests.factories import ADMIN, Org, create_org
from tests.offsets.helpers import (
    Json,
    assert_books_clean,
    assert_problem,
    count_rows,
    new_batch,
    retired,
)

T = 1_000_000  # grams in one credit


def claim_body(retirement_ids: list[str], footprint_g: Any = 500_000, **overrides: Any) -> Json:
    return {
        "claim_type": "product",
        "subject": {"name": "Rice crackers 200 g", "unit": "pack"},
        "footprint_g": footprint_g,
        "period_start": "2025-04-01",
        "period_end": "2026-03-31",
        "retirement_ids": retirement_ids,
        **overrides,
    }


async def post_claim(client: httpx.AsyncClient, org: Org, body: Json) -> httpx.Response:
    return await client.post("/v1/claims", json=body, headers=org.headers)


async def claimed_g(client: httpx.AsyncClient, org: Org, retirement: Json) -> int:
    r = await client.get(f"/v1/retirements/{retirement['id']}", headers=org.headers)
    assert r.status_code == 200, r.text
    return int(r.json()["claimed_g"])


async def holder_with_retirements(
    client: httpx.AsyncClient, quantities: list[int], **org_fields: Any
) -> tuple[Org, list[Json]]:
    holder = await create_org(client, kind="company", **org_fields)
    issued = await new_batch(client, holder, sum(quantities) + 10)
    return holder, [await retired(client, holder, issued.batch_id, q) for q in quantities]


class TestCreateClaim:
    async def test_coverage_follows_the_callers_order(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        holder, (r1, r2, r3) = await holder_with_retirements(client, [2, 3, 1])
        r = await post_claim(
            client, holder, claim_body([r2["id"], r1["id"], r3["id"]], footprint_g=4 * T + T // 2)
        )
        assert r.status_code == 201, r.text
        claim = r.json()
        assert claim["status"] == "active"
        assert claim["footprint_g"] == claim["covered_g"] == 4 * T + T // 2
        assert [(x["retirement_id"], x["grams"]) for x in claim["retirements"]] == [
            (r2["id"], 3 * T),
            (r1["id"], T + T // 2),
        ]
        assert [x["code"] for x in claim["retirements"]] == [r2["code"], r1["code"]]
        assert claim["code"].startswith("CL-")
        assert claim["verification_url"].endswith(f"/v1/public/claims/{claim['code']}")
        assert await claimed_g(client, holder, r1) == T + T // 2
        assert await claimed_g(client, holder, r2) == 3 * T
        assert await claimed_g(client, holder, r3) == 0

        r = await client.get(f"/v1/claims/{claim['id']}", headers=holder.headers)
        assert r.status_code == 200, r.text
        assert r.json() == claim

        published = (await client.get(f"/v1/public/claims/{claim['code']}")).json()
        document = published["document"]
        assert [(x["code"], x["grams"]) for x in document["retirements"]] == [
            (r2["code"], 3 * T),
            (r1["code"], T + T // 2),
        ]
        assert document["retirements"][0]["serial_ranges"] == r2["serial_ranges"]
        assert document["footprint_g"] == 4 * T + T // 2
        assert document["subject"] == {"name": "Rice crackers 200 g", "unit": "pack"}
        assert document["period"] == {"start": "2025-04-01", "end": "2026-03-31"}
        await assert_books_clean(session)

    async def test_not_covered_is_409_and_writes_nothing(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        holder, (r1, r2) = await holder_with_retirements(client, [1, 2])
        r = await post_claim(
            client, holder, claim_body([r1["id"], r2["id"]], footprint_g=3 * T + 1)
        )
        body = assert_problem(r, 409, "insufficient_coverage")
        assert body["footprint_g"] == 3 * T + 1
        assert body["available_g"] == 3 * T
        assert await count_rows(session, "offset_claims") == 0
        assert await count_rows(session, "offset_claim_allocations") == 0
        assert await claimed_g(client, holder, r1) == 0
        assert await claimed_g(client, holder, r2) == 0
        # Exactly the retirements' grams is fine.
        r = await post_claim(client, holder, claim_body([r1["id"], r2["id"]], footprint_g=3 * T))
        assert r.status_code == 201, r.text
        await assert_books_clean(session)

    async def test_no_gram_backs_two_claims(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        holder, (r1, r2) = await holder_with_retirements(client, [1, 1])
        first = await post_claim(client, holder, claim_body([r1["id"]], footprint_g=600_000))
        assert first.status_code == 201, first.text

        # The second claim on the same retirement gets only what is left.
        r = await post_claim(client, holder, claim_body([r1["id"]], footprint_g=400_001))
        body = assert_problem(r, 409, "insufficient_coverage")
        assert body["available_g"] == 400_000
        r = await post_claim(client, holder, claim_body([r1["id"]], footprint_g=400_000))
        assert r.status_code == 201, r.text
        assert [x["grams"] for x in r.json()["retirements"]] == [400_000]
        assert await claimed_g(client, holder, r1) == T

        # r1 is used up: a claim citing it first takes everything from r2.
        r = await post_claim(client, holder, claim_body([r1["id"], r2["id"]], footprint_g=T))
        assert r.status_code == 201, r.text
        assert [(x["retirement_id"], x["grams"]) for x in r.json()["retirements"]] == [
            (r2["id"], T)
        ]
        r = await post_claim(client, holder, claim_body([r1["id"], r2["id"]], footprint_g=1))
        assert_problem(r, 409, "insufficient_coverage")
        assert await count_rows(session, "offset_claims") == 3
        await assert_books_clean(session)

    async def test_another_orgs_retirement_is_404(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        _, (theirs,) = await holder_with_retirements(client, [1])
        mine_holder, (mine,) = await holder_with_retirements(client, [1])
        r = await post_claim(client, mine_holder, claim_body([theirs["id"]]))
        body = assert_problem(r, 404, "retirement_not_found")
        assert body["retirement_ids"] == [theirs["id"]]
        r = await post_claim(client, mine_holder, claim_body([mine["id"], theirs["id"]]))
        assert_problem(r, 404, "retirement_not_found")
        r = await post_claim(client, mine_holder, claim_body([str(uuid.uuid4())]))
        assert_problem(r, 404, "retirement_not_found")
        assert await count_rows(session, "offset_claims") == 0
        await assert_books_clean(session)

    async def test_retire_scope_required(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        _, (r1,) = await holder_with_retirements(client, [1])
        reader = await create_org(client, kind="company", scopes=["read"])
        r = await post_claim(client, reader, claim_body([r1["id"]]))
        assert_problem(r, 403, "insufficient_scope")
        # The administrator's key belongs to no organisation: it cannot claim (not a 500).
        r = await client.post("/v1/claims", json=claim_body([r1["id"]]), headers=ADMIN)
        assert_problem(r, 403, "insufficient_scope")
        assert await count_rows(session, "offset_claims") == 0

    async def test_invalid_bodies_are_422(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        holder, (r1, r2) = await holder_with_retirements(client, [1, 1])
        ids = [r1["id"], r2["id"]]
        cases: list[Json] = [
            claim_body(ids, footprint_g=0),
            claim_body(ids, footprint_g=-1),
            claim_body(ids, footprint_g=1.0),
            claim_body(ids, footprint_g=2.5),
            claim_body(ids, footprint_g="100"),
            claim_body(ids, footprint_g=10**16),
            claim_body(ids, subject={"name": "Beer", "weight_kg": 0.35}),
            claim_body(ids, subject={"name": "Beer", "per": {"can": 1.5}}),
            claim_body(ids, subject={"name": "Beer", "sizes": [330, 500.0]}),
            claim_body(ids, subject={"unit": "can"}),
            claim_body(ids, subject={"name": ""}),
            claim_body([r1["id"], r1["id"]]),
            claim_body([]),
            claim_body(ids, period_start="2026-04-01", period_end="2026-03-31"),
            claim_body(ids, claim_type="vehicle"),
            claim_body(ids, extra_field=True),
        ]
        for body in cases:
            r = await post_claim(client, holder, body)
            assert_problem(r, 422, "validation_error")
        assert await count_rows(session, "offset_claims") == 0
        # Integer subject values, nested, are fine.
        r = await post_claim(
            client,
            holder,
            claim_body(ids, subject={"name": "Beer", "sizes_ml": [330, 500], "per": {"can": 1}}),
        )
        assert r.status_code == 201, r.text
        await assert_books_clean(session)

    async def test_read_is_owner_only(self, client: httpx.AsyncClient) -> None:
        holder, (r1,) = await holder_with_retirements(client, [1])
        stranger = await create_org(client, kind="company")
        claim = (await post_claim(client, holder, claim_body([r1["id"]]))).json()
        r = await client.get(f"/v1/claims/{claim['id']}", headers=stranger.headers)
        assert_problem(r, 404, "claim_not_found")
        r = await client.get(f"/v1/claims/{uuid.uuid4()}", headers=holder.headers)
        assert_problem(r, 404, "claim_not_found")
        r = await client.get("/v1/public/claims/CL-0000-0000-0000")
        assert_problem(r, 404, "claim_not_found")


class TestRevokeClaim:
    async def test_revocation_frees_the_grams_and_is_published(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        holder, (r1,) = await holder_with_retirements(client, [1])
        claim = (await post_claim(client, holder, claim_body([r1["id"]], footprint_g=T))).json()
        assert_problem(
            await post_claim(client, holder, claim_body([r1["id"]], footprint_g=1)),
            409,
            "insufficient_coverage",
        )

        r = await client.post(
            f"/v1/claims/{claim['id']}/revoke",
            json={"reason": "Footprint recalculated"},
            headers=holder.headers,
        )
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "revoked"
        assert r.json()["revoked_reason"] == "Footprint recalculated"
        assert await claimed_g(client, holder, r1) == 0

        published = (await client.get(f"/v1/public/claims/{claim['code']}")).json()
        assert published["status"] == "revoked"
        assert published["revoked_reason"] == "Footprint recalculated"
        await assert_books_clean(session)

        # The grams are free for another claim.
        r = await post_claim(client, holder, claim_body([r1["id"]], footprint_g=T))
        assert r.status_code == 201, r.text
        assert await claimed_g(client, holder, r1) == T
        await assert_books_clean(session)

    async def test_revoking_twice_is_409(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        holder, (r1,) = await holder_with_retirements(client, [1])
        claim = (await post_claim(client, holder, claim_body([r1["id"]], footprint_g=T))).json()
        url = f"/v1/claims/{claim['id']}/revoke"
        assert (
            await client.post(url, json={"reason": "first"}, headers=holder.headers)
        ).status_code == 200
        # Someone claims the freed grams: a second revocation must not free them again.
        assert (
            await post_claim(client, holder, claim_body([r1["id"]], footprint_g=T))
        ).status_code == 201
        r = await client.post(url, json={"reason": "second"}, headers=holder.headers)
        assert_problem(r, 409, "claim_already_revoked")
        assert await claimed_g(client, holder, r1) == T
        published = (await client.get(f"/v1/public/claims/{claim['code']}")).json()
        assert published["revoked_reason"] == "first"
        await assert_books_clean(session)

    async def test_another_orgs_claim_is_404(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        holder, (r1,) = await holder_with_retirements(client, [1])
        stranger = await create_org(client, kind="company")
        claim = (await post_claim(client, holder, claim_body([r1["id"]]))).json()
        r = await client.post(
            f"/v1/claims/{claim['id']}/revoke", json={"reason": "x"}, headers=stranger.headers
        )
        assert_problem(r, 404, "claim_not_found")
        r = await client.post(
            f"/v1/claims/{claim['id']}/revoke", json={"reason": "  "}, headers=holder.headers
        )
        assert_problem(r, 422, "validation_error")
        assert (await client.get(f"/v1/claims/{claim['id']}", headers=holder.headers)).json()[
            "status"
        ] == "active"
        await assert_books_clean(session)


def _set(path: list[str | int], value: Any) -> Callable[[Json], None]:
    def change(document: Json) -> None:
        target: Any = document
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


def _bump_serial(document: Json) -> None:
    document["retirements"][0]["serial_ranges"][0][1] += 1


TAMPERINGS: dict[str, Callable[[Json], None]] = {
    "subject name": _set(["subject", "name"], "Rice crackers 300 g"),
    "footprint_g": _set(["footprint_g"], 2_500_001),
    "covered_g": _set(["covered_g"], 2_500_001),
    "serial range": _bump_serial,
    "claimant name": _set(["claimant", "name"], "Another K.K."),
    "code": _set(["code"], "CL-AAAA-BBBB-CCCC"),
    "period end": _set(["period", "end"], "2027-03-31"),
    "retirement grams": _set(["retirements", 0, "grams"], 1),
    "added field": _set(["note"], "carbon neutral"),
}


class TestSignature:
    async def _published(self, client: httpx.AsyncClient) -> tuple[Json, bytes]:
        holder, (r1,) = await holder_with_retirements(client, [3], name="Sakura Foods K.K.")
        claim = (
            await post_claim(client, holder, claim_body([r1["id"]], footprint_g=2_500_000))
        ).json()
        r = await client.get(f"/v1/public/claims/{claim['code']}")
        assert r.status_code == 200, r.text
        published = r.json()
        keys = (await client.get("/v1/public/keys")).json()
        key = next(k for k in keys if k["key_id"] == published["key_id"])
        assert key["algorithm"] == published["algorithm"] == "Ed25519"
        return published, b64url_decode(key["public_key"])

    async def test_the_public_key_alone_verifies_the_document(
        self, client: httpx.AsyncClient
    ) -> None:
        published, public_key = await self._published(client)
        assert published["canonical"] == canonical_json(published["document"])
        assert verify(public_key, published["canonical"], published["signature"])
        # What the page shows is what was signed.
        document = json.loads(published["canonical"])
        assert document["claimant"]["name"] == "Sakura Foods K.K."
        assert document["footprint_g"] == 2_500_000
        assert document["code"] == published["code"]

    @pytest.mark.parametrize("field", list(TAMPERINGS))
    async def test_altering_any_field_breaks_the_signature(
        self, client: httpx.AsyncClient, field: str
    ) -> None:
        published, public_key = await self._published(client)
        document = json.loads(published["canonical"])
        TAMPERINGS[field](document)
        tampered = canonical_json(document)
        assert tampered != published["canonical"]
        assert not verify(public_key, tampered, published["signature"])
        assert verify(public_key, published["canonical"], published["signature"])

    async def test_pem_key_and_non_ascii_subject(self, client: httpx.AsyncClient) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        holder, (r1,) = await holder_with_retirements(client, [1], name="さくら食品株式会社")
        body = claim_body([r1["id"]], subject={"name": "米菓 200 g", "産地": "新潟"})
        claim = (await post_claim(client, holder, body)).json()
        published = (await client.get(f"/v1/public/claims/{claim['code']}")).json()
        assert published["document"]["subject"] == {"name": "米菓 200 g", "産地": "新潟"}
        assert published["document"]["claimant"]["name"] == "さくら食品株式会社"
        keys = (await client.get("/v1/public/keys")).json()
        key = next(k for k in keys if k["key_id"] == published["key_id"])
        pem_key = load_pem_public_key(key["public_key_pem"].encode())
        assert isinstance(pem_key, Ed25519PublicKey)
        # Raises InvalidSignature if the bytes signed are not the canonical UTF-8 text.
        pem_key.verify(b64url_decode(published["signature"]), published["canonical"].encode())
        assert verify(
            b64url_decode(key["public_key"]), published["canonical"], published["signature"]
        )

    async def test_another_key_does_not_verify(self, client: httpx.AsyncClient) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        published, _ = await self._published(client)
        other = (
            Ed25519PrivateKey.generate()
            .public_key()
            .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )
        assert not verify(other, published["canonical"], published["signature"])
