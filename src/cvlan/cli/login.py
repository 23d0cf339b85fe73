"""`cvlan login`: sign in to a controller through its identity provider and keep the credential.

It uses the OAuth 2.0 device authorization grant (RFC 8628) brokered by the controller: the
controller asks the provider for a user code, `cvlan login` prints where to enter it (any browser,
on any machine, so this works over SSH too) and polls the controller until the person approved.
The controller verifies the provider's ID token, maps groups to roles, and answers with a token that
acts with the user's roles; it is written to the admin configuration file, mode 0600, like the
platform-admin file the controller writes on first start."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from cvlan.cli.http import ApiError, Client
from cvlan.common import adminconf

DEFAULT_CONFIG = Path("~/.config/cvlan/admin.conf")
MAX_POLLS = 2000


def add_parser(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    help_ = "sign in through the controller's identity provider and store the credential (0600)"
    p = groups.add_parser(
        "login", help=help_, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--provider", help="identity provider name (needed when the controller has several)")
    p.add_argument(
        "--ca-file", type=Path, help="PEM of the controller's CA (default: the one in the config file)"
    )
    p.set_defaults(fn=None, login=True)


def config_path(ns: argparse.Namespace) -> Path:
    given = ns.config or (Path(os.environ["CVLAN_CONFIG"]) if os.environ.get("CVLAN_CONFIG") else None)
    return (given or DEFAULT_CONFIG).expanduser()


def _existing(path: Path) -> adminconf.AdminConf:
    if not path.exists():
        return adminconf.AdminConf()
    try:
        return adminconf.load(path, complete=False)
    except adminconf.AdminConfError as e:
        raise ApiError(0, "usage", str(e)) from None


def _provider(c: Client, given: str | None) -> str:
    names = [p["name"] for p in c.call("GET", "/api/v1/auth/providers")["items"]]
    if given:
        return given
    if len(names) == 1:
        return str(names[0])
    if not names:
        raise ApiError(0, "usage", f"{c.server} has no identity provider configured")
    raise ApiError(0, "usage", f"several identity providers: choose one with --provider ({', '.join(names)})")


def _wait(c: Client, start: dict[str, Any]) -> dict[str, Any]:
    interval = max(1, int(start["interval"]))
    deadline = time.monotonic() + int(start["expires_in"])
    for _ in range(MAX_POLLS):
        out: dict[str, Any] = c.call("POST", "/api/v1/auth/device/poll", {"handle": start["handle"]})
        if out.get("status") == "done":
            return out
        if time.monotonic() + interval > deadline:
            break
        time.sleep(interval)
    raise ApiError(0, "expired", "the sign-in was not approved in time; run cvlan login again")


def run(ns: argparse.Namespace) -> int:
    path = config_path(ns)
    conf = _existing(path)
    server = (ns.server or os.environ.get("CVLAN_SERVER") or conf.server).rstrip("/")
    if not server:
        raise ApiError(
            0, "usage", "no server: use --server URL (or CVLAN_SERVER, or a config file naming one)"
        )
    ca_pem = ns.ca_file.read_text() if ns.ca_file else conf.ca_pem
    c = Client(server, "", ca_pem)
    start = c.call("POST", "/api/v1/auth/device", {"provider": _provider(c, ns.provider)})
    print(f"To sign in, open {start['verification_uri_complete']}", file=sys.stderr)
    print(f"and check that it shows the code {start['user_code']}.", file=sys.stderr, flush=True)
    done = _wait(c, start)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    adminconf.write(path, server, done["token"], ca_pem)
    print(f"Signed in as {done['email']} until {done['expires_at']}; credential in {path} (mode 0600).")
    return 0
