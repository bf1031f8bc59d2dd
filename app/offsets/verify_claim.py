"""Offline verification of a published claim: what ``tanso claims verify`` runs.

Input: the claim as published (``GET /v1/public/claims/{code}``, saved to a file) and the
signing keys (``GET /v1/public/keys``, saved to a file, or one raw base64url key). No network.
Checks, each reported: the signed string is the canonical JSON of the document; the key id is
the SHA-256 of the key; the Ed25519 signature verifies. Pure functions, no I/O.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from app.offsets.signing import b64url_decode, canonical_json, verify


@dataclass
class ClaimVerification:
    code: str
    checks: list[tuple[str, bool, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(passed for _, passed, _ in self.checks)


def parse_keys(text: str) -> dict[str, bytes]:
    """Keys by key id, from the JSON of ``/v1/public/keys`` or a single base64url raw key."""
    text = text.strip()
    raws: list[bytes] = []
    if text.startswith("[") or text.startswith("{"):
        data = json.loads(text)
        items = data if isinstance(data, list) else [data]
        raws = [b64url_decode(str(item["public_key"])) for item in items]
    else:
        raws = [b64url_decode(text)]
    return {hashlib.sha256(raw).hexdigest()[:16]: raw for raw in raws}


def verify_published_claim(published: dict[str, Any], keys: dict[str, bytes]) -> ClaimVerification:
    result = ClaimVerification(code=str(published.get("code", "?")))
    canonical = published.get("canonical")
    document = published.get("document")
    signature = published.get("signature")
    key_id = published.get("key_id")
    if not isinstance(canonical, str) or not isinstance(signature, str):
        result.checks.append(("well-formed", False, "canonical and signature are required"))
        return result
    same = isinstance(document, dict) and canonical_json(document) == canonical
    result.checks.append(
        ("canonical", same, "the signed string is the canonical JSON of the document")
    )
    key = keys.get(str(key_id))
    result.checks.append(
        ("key", key is not None, f"key {key_id} is among the keys given ({len(keys)})")
    )
    if key is not None:
        good = verify(key, canonical, signature)
        result.checks.append(("signature", good, "Ed25519 signature over the UTF-8 string"))
    return result
