"""Web UI sessions: a signed cookie whose expiry the server enforces, revocable at sign-out.

The cookie carries (user id, nonce, issued at, expires at, password fingerprint) and an HMAC over
them with a key kept in the database, so every controller process sharing the database accepts it
and a restart keeps people signed in. The server, not the browser, decides expiry: an idle session
ends after IDLE, any session after ABSOLUTE. Changing a user's password ends all its sessions (the
fingerprint no longer matches). Signing out records the nonce as revoked in the database until the
cookie would have expired anyway."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from cvlan.controller.db.models import KeyValue, User
from cvlan.controller.errors import DomainError
from cvlan.controller.ops.context import OpsContext

COOKIE = "cvlan_session"
KEY_NAME = "ui_session_key"
REVOKED_PREFIX = "ui_signout:"
IDLE = dt.timedelta(hours=2)
ABSOLUTE = dt.timedelta(hours=12)
REFRESH_AFTER = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class Session:
    """A verified session: who, which nonce (for CSRF and revocation), and its time bounds."""

    user_id: int
    nonce: str
    issued_at: int
    expires_at: int
    pw_fp: str

    def csrf(self, key: bytes) -> str:
        return hmac.new(key, b"csrf|" + self.nonce.encode(), hashlib.sha256).hexdigest()[:40]


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def password_fingerprint(key: bytes, user: User) -> str:
    """Binds a session to the password and the session epoch: changing either ends the session.
    (Epoch 0 adds nothing, so sessions from before epochs existed stay valid.)"""
    epoch = f"|{user.session_epoch}" if user.session_epoch else ""
    return hmac.new(key, b"pw|" + (user.password_hash + epoch).encode(), hashlib.sha256).hexdigest()[:16]


async def signing_key(ctx: OpsContext) -> bytes:
    """The HMAC key, created on first use. Two processes racing both end up with the stored one."""
    async with ctx.tx() as s:
        row = await s.get(KeyValue, KEY_NAME)
        if row is not None:
            return bytes.fromhex(row.value)
    try:
        async with ctx.tx() as s:
            s.add(KeyValue(key=KEY_NAME, value=secrets.token_hex(32)))
    except DomainError:  # lost the race (CONFLICT): the other process's key is stored now
        pass
    async with ctx.tx() as s:
        row = await s.get(KeyValue, KEY_NAME)
        assert row is not None
        return bytes.fromhex(row.value)


def new_session(key: bytes, user: User, now: dt.datetime) -> Session:
    t = int(now.timestamp())
    return Session(
        user_id=user.id,
        nonce=secrets.token_urlsafe(16),
        issued_at=t,
        expires_at=t + int(IDLE.total_seconds()),
        pw_fp=password_fingerprint(key, user),
    )


def refreshed(sess: Session, now: dt.datetime) -> Session | None:
    """A session with its idle expiry pushed forward, or None when it is fresh enough already."""
    t = int(now.timestamp())
    new_exp = min(t + int(IDLE.total_seconds()), sess.issued_at + int(ABSOLUTE.total_seconds()))
    if new_exp - sess.expires_at < REFRESH_AFTER.total_seconds():
        return None
    return Session(sess.user_id, sess.nonce, sess.issued_at, new_exp, sess.pw_fp)


def encode(key: bytes, sess: Session) -> str:
    payload = _b64(
        json.dumps(
            [sess.user_id, sess.nonce, sess.issued_at, sess.expires_at, sess.pw_fp], separators=(",", ":")
        ).encode()
    )
    mac = _b64(hmac.new(key, payload.encode(), hashlib.sha256).digest())
    return f"{payload}.{mac}"


def decode(key: bytes, text: str, now: dt.datetime) -> Session | None:
    """The session in a cookie if its signature is good and it has not expired; None otherwise."""
    payload, _, mac = text.partition(".")
    if not payload or not mac or len(text) > 512:
        return None
    want = _b64(hmac.new(key, payload.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(want.encode(), mac.encode()):
        return None
    try:
        uid, nonce, iat, exp, fp = json.loads(_unb64(payload))
        sess = Session(int(uid), str(nonce), int(iat), int(exp), str(fp))
    except (ValueError, TypeError):
        return None
    t = now.timestamp()
    if t >= sess.expires_at or t >= sess.issued_at + ABSOLUTE.total_seconds():
        return None
    return sess


async def load_user(s: AsyncSession, key: bytes, sess: Session) -> User | None:
    """The session's user, unless the session was signed out, or the password or session epoch
    changed since."""
    if await s.get(KeyValue, REVOKED_PREFIX + sess.nonce) is not None:
        return None
    user = await s.get(User, sess.user_id)
    if user is None or not hmac.compare_digest(password_fingerprint(key, user).encode(), sess.pw_fp.encode()):
        return None
    return user


async def revoke(s: AsyncSession, sess: Session, now: dt.datetime) -> None:
    """Record a signed-out session until its expiry, and forget revocations that have expired."""
    s.add(KeyValue(key=REVOKED_PREFIX + sess.nonce, value=str(sess.expires_at)))
    rows = await s.execute(
        select(KeyValue.key, KeyValue.value).where(KeyValue.key.like(REVOKED_PREFIX + "%")).limit(1000)
    )
    stale = [k for k, v in rows.all() if v.isdigit() and int(v) < now.timestamp()]
    if stale:
        await s.execute(delete(KeyValue).where(KeyValue.key.in_(stale)))
