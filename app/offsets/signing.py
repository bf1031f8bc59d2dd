"""Ed25519 signatures over canonical JSON, so anyone can verify a published claim offline.

Canonical JSON here: UTF-8, keys sorted, no insignificant whitespace, integers only (no
floats anywhere in a claim), ``ensure_ascii=False``. For the documents we sign (objects,
arrays, strings, integers, booleans, null) this coincides with RFC 8785 (JCS).
The key id is the first 16 hex digits of the SHA-256 of the raw 32-byte public key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from app.config import Settings

ALGORITHM = "Ed25519"


def canonical_json(document: Any) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey

    @property
    def public_raw(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @property
    def key_id(self) -> str:
        return hashlib.sha256(self.public_raw).hexdigest()[:16]

    @property
    def public_pem(self) -> str:
        return (
            self.private.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    def sign(self, canonical: str) -> str:
        return b64url(self.private.sign(canonical.encode()))


def verify(public_key_raw: bytes, canonical: str, signature: str) -> bool:
    """True if ``signature`` (base64url) is ``public_key_raw``'s signature of ``canonical``."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key_raw).verify(
            b64url_decode(signature), canonical.encode()
        )
    except (InvalidSignature, ValueError):
        return False
    return True


def _load_pem(pem: bytes) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("the claims signing key must be an Ed25519 private key")
    return key


@lru_cache(maxsize=4)
def _key_for(pem: str | None, data_dir: Path) -> SigningKey:
    key_file = (data_dir / "claims-signing-key.pem").resolve()
    if pem:
        return SigningKey(_load_pem(pem.encode()))
    if key_file.exists():
        return SigningKey(_load_pem(key_file.read_bytes()))
    key = Ed25519PrivateKey.generate()
    key_file.parent.mkdir(parents=True, exist_ok=True)
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # Write aside, then link into place: a key file is either absent or complete, and if
    # another process made one first, we use theirs.
    tmp = key_file.with_name(f".{key_file.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    try:
        os.link(tmp, key_file)
    except FileExistsError:
        key = _load_pem(key_file.read_bytes())
    finally:
        tmp.unlink()
    return SigningKey(key)


def signing_key(settings: Settings) -> SigningKey:
    secret = settings.claims.signing_key
    # Cached by (PEM, folder as given): resolving the path touches the file system, which a
    # per-request call must not.
    return _key_for(secret.get_secret_value() if secret else None, settings.data_dir)
