"""Tokens stored hashed and checked in constant time; passwords with argon2."""

from __future__ import annotations

from cvlan.controller import credentials


def test_tokens_are_stored_hashed_and_checked_in_constant_time() -> None:
    t = credentials.issue("cvat")
    prefix, secret = credentials.split(t.text, "cvat") or ("", "")
    assert prefix == t.prefix and credentials.check_secret(secret, t.digest)
    assert not credentials.check_secret(secret + "x", t.digest)
    assert t.digest != secret.encode() and len(t.digest) == 32
    assert credentials.split(t.text, "cvet") is None and credentials.split("cvat__x", "cvat") is None


def test_passwords_use_argon2() -> None:
    h = credentials.hash_password("correct horse battery")
    assert h.startswith("$argon2id$")
    assert credentials.check_password("correct horse battery", h)
    assert not credentials.check_password("wrong", h) and not credentials.check_password("x", "garbage")
