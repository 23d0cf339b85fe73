"""Password sign-in with a growing lockout after repeated failures.

Every attempt costs one argon2 verification, also for an unknown email (against a dummy hash), so
the answer time does not tell which emails exist. After FREE_FAILURES wrong passwords in a row the
account is locked for LOCK_BASE seconds, doubling with each further failure up to LOCK_MAX; a
successful sign-in resets the count. The verification runs in a worker thread so that a burst of
attempts does not stall the event loop."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from dataclasses import dataclass

from cvlan.controller import audit, credentials
from cvlan.controller.auth import Principal
from cvlan.controller.db.models import User
from cvlan.controller.errors import DomainError, Kind
from cvlan.controller.oidc import mappings
from cvlan.controller.oidc.signin import record_failure
from cvlan.controller.ops import users
from cvlan.controller.ops.context import OpsContext

FREE_FAILURES = 5
LOCK_BASE = dt.timedelta(seconds=30)
LOCK_MAX = dt.timedelta(minutes=15)
FAILURE_DELAY_S = 0.3
_DUMMY_HASH = credentials.hash_password("not-a-real-password-just-for-timing")


@dataclass(frozen=True)
class Outcome:
    user: User | None
    error: str = ""


def lock_for(failures: int) -> dt.timedelta:
    """How long an account stays locked after its n-th consecutive failure (zero below the limit)."""
    if failures < FREE_FAILURES:
        return dt.timedelta(0)
    step: int = 2 ** min(failures - FREE_FAILURES, 10)
    return min(LOCK_MAX, LOCK_BASE * step)


async def check(ctx: OpsContext, email: str, password: str) -> Outcome:
    """Verify an email and password; count failures and lock the account after too many."""
    email = email.strip().lower()
    async with ctx.tx() as s:
        user = await users.by_email(s, email) if email else None
        encoded = user.password_hash if user is not None else _DUMMY_HASH
        now = ctx.now()
        until = user.locked_until if user is not None else None
        locked_s = (until - now).total_seconds() if until is not None and until > now else 0.0
    if locked_s > 0:
        mins = math.ceil(locked_s / 60)
        await record_failure(ctx, "password", "", email, "account locked after repeated failures")
        await asyncio.sleep(FAILURE_DELAY_S)
        return Outcome(
            None, f"Too many failed sign-ins. Try again in {mins} minute{'s' if mins != 1 else ''}."
        )
    ok = await asyncio.to_thread(credentials.check_password, password, encoded)
    out, reason = await _settle(ctx, user, ok)
    if out.user is None:
        await record_failure(ctx, "password", "", email, reason)
        await asyncio.sleep(FAILURE_DELAY_S)
    return out


async def _settle(ctx: OpsContext, user: User | None, ok: bool) -> tuple[Outcome, str]:
    """Count the attempt against the account (lock it after too many failures); the outcome and,
    for a refusal, the reason the audit log records."""
    wrong = Outcome(None, "The email or password is not correct.")
    async with ctx.tx() as s:
        row = await users.get_user(s, user.id, lock=True) if user is not None else None
        if row is None:
            return wrong, "unknown email"
        who = Principal(actor=f"user:{row.email}", user_id=row.id)
        blocked = await mappings.password_blocked_by(s, row.id) if ok else None
        if blocked is not None:
            msg = f"Members of tenant {blocked} sign in with their identity provider, not a password."
            return Outcome(None, msg), f"local passwords are disabled in tenant {blocked}"
        if ok:
            row.failed_logins = 0
            row.locked_until = None
            audit.record(
                s,
                who,
                "user.signin",
                "user",
                row.id,
                tenant_id=None,
                after={"method": "password"},
                now=ctx.now(),
            )
            return Outcome(row), ""
        row.failed_logins = (row.failed_logins or 0) + 1
        lock = lock_for(row.failed_logins)
        if lock:
            row.locked_until = ctx.now() + lock
            audit.record(
                s,
                who,
                "user.locked",
                "user",
                row.id,
                tenant_id=None,
                after={"failed_logins": row.failed_logins, "locked_seconds": int(lock.total_seconds())},
                now=ctx.now(),
            )
    return wrong, "wrong password"


async def change_password(ctx: OpsContext, user_id: int, current: str, new: str) -> User:
    """Set a new password after checking the current one. Every other session of the user ends
    (their cookies carry the old password's fingerprint)."""
    async with ctx.tx() as s:
        user = await users.get_user(s, user_id)
        encoded = user.password_hash if user is not None else _DUMMY_HASH
    if not await asyncio.to_thread(credentials.check_password, current, encoded) or user is None:
        await asyncio.sleep(FAILURE_DELAY_S)
        raise DomainError(Kind.INVALID, "the current password is not correct", {"field": "current"})
    users.check_password(new)
    if new == current:
        raise DomainError(
            Kind.INVALID, "the new password is the same as the current one", {"field": "password"}
        )
    digest = await asyncio.to_thread(credentials.hash_password, new)
    async with ctx.tx() as s:
        row = await users.get_user(s, user_id, lock=True)
        if row is None:
            raise DomainError(Kind.NOT_FOUND, "user not found")
        row.password_hash = digest
        who = Principal(actor=f"user:{row.email}", user_id=row.id)
        audit.record(
            s, who, "user.password", "user", row.id, tenant_id=None, after={"email": row.email}, now=ctx.now()
        )
    return row
