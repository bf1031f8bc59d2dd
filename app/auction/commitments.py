"""Hash commitments published before an auction opens and revealed after it clears. Pure.

Every commitment is the lowercase hex SHA-256 of one UTF-8 line of ``|``-separated fields,
starting with a versioned domain tag, ending with a nonce of 32 random bytes written as 64
lowercase hex digits. Identifiers are UUIDs in their canonical lowercase hyphenated form
(``str(uuid)``); integers are written in decimal with no sign, padding or separators.

Bid (returned to the bidder at submission; the nonce is returned once, and also kept by the
server so that the post-clearing audit can reveal it)::

    sha256("tanso-auction-bid-v1|<auction_id>|<bid_id>|<price>|<quantity>|<nonce_hex>")

Confidential reserve price (published at creation; ``none`` when the auction has no
reserve, so the commitment never tells whether a reserve exists)::

    sha256("tanso-auction-reserve-v1|<auction_id>|<reserve_price or none>|<nonce_hex>")

Tie-break seed (published at creation; the seed is 32 random bytes, written as 64 hex digits
here, and the clearing uses the raw 32 bytes as ``AuctionRules.seed``)::

    sha256("tanso-auction-seed-v1|<auction_id>|<seed_hex>|<nonce_hex>")

A verifier recomputes each line from the revealed values and compares the digests, e.g.
``printf '%s' 'tanso-auction-bid-v1|…' | sha256sum``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid

NONCE_BYTES = 32
SEED_BYTES = 32
BID_TAG = "tanso-auction-bid-v1"
RESERVE_TAG = "tanso-auction-reserve-v1"
SEED_TAG = "tanso-auction-seed-v1"


def new_nonce() -> str:
    """32 random bytes as 64 lowercase hex digits."""
    return secrets.token_hex(NONCE_BYTES)


def new_seed() -> str:
    return secrets.token_hex(SEED_BYTES)


def _digest(*fields: str) -> str:
    return hashlib.sha256("|".join(fields).encode()).hexdigest()


def _check_nonce(nonce: str) -> None:
    if len(nonce) != 2 * NONCE_BYTES or nonce != nonce.lower():
        raise ValueError("nonce must be 64 lowercase hex digits")
    bytes.fromhex(nonce)


def bid_commitment(
    auction_id: uuid.UUID, bid_id: uuid.UUID, price: int, quantity: int, nonce: str
) -> str:
    _check_nonce(nonce)
    return _digest(BID_TAG, str(auction_id), str(bid_id), str(price), str(quantity), nonce)


def reserve_commitment(auction_id: uuid.UUID, reserve_price: int | None, nonce: str) -> str:
    _check_nonce(nonce)
    value = "none" if reserve_price is None else str(reserve_price)
    return _digest(RESERVE_TAG, str(auction_id), value, nonce)


def seed_commitment(auction_id: uuid.UUID, seed: str, nonce: str) -> str:
    _check_nonce(nonce)
    if len(seed) != 2 * SEED_BYTES or seed != seed.lower():
        raise ValueError("seed must be 64 lowercase hex digits")
    bytes.fromhex(seed)
    return _digest(SEED_TAG, str(auction_id), seed, nonce)


def matches(expected: str, actual: str) -> bool:
    return hmac.compare_digest(expected, actual)
