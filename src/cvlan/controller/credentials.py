"""Secrets: generation, hashing and constant-time checks. Nothing here logs a secret."""

from __future__ import annotations

import hashlib
import hmac
import secrets as _secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_PH = PasswordHasher()


@dataclass(frozen=True, slots=True)
class IssuedSecret:
    """A freshly issued token: the full text is shown once; only prefix and hash are stored."""

    kind: str
    prefix: str
    secret: str

    @property
    def text(self) -> str:
        return f"{self.kind}_{self.prefix}_{self.secret}"

    @property
    def digest(self) -> bytes:
        return hash_secret(self.secret)


def issue(kind: str) -> IssuedSecret:
    """A token such as cvat_<prefix>_<secret>. The prefix looks the row up; the secret proves it."""
    return IssuedSecret(kind, _secrets.token_hex(8), _secrets.token_urlsafe(32))


def split(text: str, kind: str) -> tuple[str, str] | None:
    """Return (prefix, secret) of a token of the given kind, or None if it is not one."""
    parts = text.strip().split("_", 2)
    if len(parts) != 3 or parts[0] != kind or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def hash_secret(secret: str) -> bytes:
    # Tokens carry 256 random bits, so a fast hash suffices; passwords use argon2 below.
    return hashlib.sha256(secret.encode()).digest()


def check_secret(secret: str, digest: bytes) -> bool:
    return hmac.compare_digest(hash_secret(secret), digest)


def hash_password(password: str) -> str:
    return _PH.hash(password)


def check_password(password: str, encoded: str) -> bool:
    try:
        return _PH.verify(encoded, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def random_password() -> str:
    return _secrets.token_urlsafe(15)
