"""`cvlan-controller useradd` and `cvlan-controller passwd`: give people a password for the web UI.

They work on the controller's database directly (same settings as `serve`), so the operator can
create the first platform admin before anyone can sign in. A password is read from standard input
(--password-stdin) or generated and printed once; it is stored only as an argon2 hash."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cvlan.controller import audit, credentials
from cvlan.controller.auth import SYSTEM
from cvlan.controller.db import engine as dbengine
from cvlan.controller.errors import DomainError, Kind
from cvlan.controller.ops import users
from cvlan.controller.ops.context import OpsContext, resolve_tenant
from cvlan.controller.settings import ControllerSettings, load_settings

COMMANDS = ("useradd", "passwd")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, help="state directory (default ./cvlan-data)")
    p.add_argument("--db", help="database URL (default: SQLite inside the data dir)")
    p.add_argument("--config", type=Path, help="TOML file with settings (same as serve)")
    p.add_argument("--email", required=True, help="the user's email address (their sign-in name)")
    p.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from standard input (first line) instead of generating one",
    )


def add_parsers(sub: Any) -> None:
    """Register the subcommands on cvlan-controller's subparsers."""
    a = sub.add_parser(
        "useradd",
        help="create a user who can sign in to the web UI",
        description="Create a user with a password: a platform admin (--platform-admin) or a user "
        "with a role in one tenant (--tenant and --role). Without --password-stdin a password is "
        "generated and printed once.",
    )
    _common(a)
    a.add_argument("--platform-admin", action="store_true", help="the user administers the whole platform")
    a.add_argument("--tenant", help="tenant (name or id) the user gets a role in")
    a.add_argument("--role", choices=("admin", "operator", "auditor"), help="role in --tenant")
    p = sub.add_parser(
        "passwd",
        help="set a user's password and lift a sign-in lockout",
        description="Set a new password for an existing user (ending their web sessions) and clear "
        "any lockout after failed sign-ins.",
    )
    _common(p)


def _read_password(args: argparse.Namespace) -> tuple[str, bool]:
    """(password, generated)."""
    if not args.password_stdin:
        return credentials.random_password(), True
    if sys.stdin.isatty():
        pw = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != pw:
            raise DomainError(Kind.INVALID, "the two passwords differ")
        return pw, False
    return sys.stdin.readline().rstrip("\r\n"), False


async def _useradd(ctx: OpsContext, args: argparse.Namespace, password: str) -> None:
    async with ctx.tx() as s:
        if args.platform_admin:
            if await users.by_email(s, users.check_email(args.email)):
                raise DomainError(Kind.CONFLICT, f"a user {args.email} already exists; use passwd")
            u = await users.create_platform_admin(ctx, s, args.email, password)
            audit.record(s, SYSTEM, "user.create", "user", u.id, tenant_id=None, after={"email": u.email})
        else:
            t = await resolve_tenant(s, SYSTEM, args.tenant)
            await users.create_user(ctx, s, SYSTEM, t, args.email, args.role, password)


async def _passwd(ctx: OpsContext, args: argparse.Namespace, password: str) -> None:
    async with ctx.tx() as s:
        u = await users.by_email(s, args.email)
        if u is None:
            raise DomainError(Kind.NOT_FOUND, f"no user {args.email}")
        u.password_hash = credentials.hash_password(users.check_password(password))
        u.failed_logins = 0
        u.locked_until = None
        audit.record(s, SYSTEM, "user.password", "user", u.id, tenant_id=None, after={"email": u.email})


async def _run(settings: ControllerSettings, args: argparse.Namespace, password: str) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = dbengine.create_engine(settings.db_url, 1)
    try:
        await dbengine.upgrade(settings.db_url)
        ctx = OpsContext(settings=settings, sessions=dbengine.session_factory(engine))
        await (_useradd if args.cmd == "useradd" else _passwd)(ctx, args, password)
    finally:
        await engine.dispose()


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")


def _err(line: str) -> None:
    sys.stderr.write(line + "\n")


def main(args: argparse.Namespace) -> int:
    """Run useradd or passwd; one line on stderr and exit 1 (2 for usage) on failure."""
    prog = f"cvlan-controller {args.cmd}"
    if args.cmd == "useradd" and args.platform_admin == bool(args.tenant or args.role):
        _err(f"{prog}: give either --platform-admin or both --tenant and --role")
        return 2
    if args.cmd == "useradd" and not args.platform_admin and not (args.tenant and args.role):
        _err(f"{prog}: --tenant and --role go together")
        return 2
    try:
        settings = load_settings(args.config, {"data_dir": args.data_dir, "db": args.db})
    except (ValidationError, OSError, ValueError) as e:
        _err(f"{prog}: cannot load settings: {str(e).splitlines()[0]}")
        return 2
    try:
        password, generated = _read_password(args)
        users.check_password(password)
        asyncio.run(_run(settings, args, password))
    except DomainError as e:
        _err(f"{prog}: {e.message}")
        return 1
    done = "created" if args.cmd == "useradd" else "password changed"
    _out(f"{args.email}: {done}. Sign in at {settings.url}/ui/")
    if generated:
        _out(f"password: {password}")
        _out("(shown only now; change it with `cvlan-controller passwd --password-stdin`)")
    return 0
