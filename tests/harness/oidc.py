"""A real OpenID Connect provider on loopback for sign-in tests: panva's oidc-provider (npm, run by
Debian's or NodeSource's node), from tests/oidcprovider (installed there by `make oidc-provider`).

OidcProvider writes the provider's configuration (clients, signing key, accounts file), starts it,
and stops it by its PID. Accounts can be changed between sign-ins (set_account); a restart with
rotate_key=True serves a new signing key under a new kid, as a provider rotating its keys does.
IdpBrowser walks the provider's own login, consent and device pages over HTTP, for tests that do
not need a real browser (the browser test signs in through the same pages in Chromium)."""

from __future__ import annotations

import asyncio
import datetime as dt
import html
import json
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from joserfc.jwk import RSAKey

from cvlan.common.clock import SystemClock
from tests.harness.controller import RunningController, free_port

PROVIDER_DIR = Path(__file__).resolve().parents[1] / "oidcprovider"
CLIENT_ID = "cvlan-controller"
CLIENT_SECRET = "test-client-secret-0123456789abcdef"
START_TIMEOUT_S = 20.0


def missing() -> str | None:
    """Why the provider cannot run here, or None."""
    if shutil.which("node") is None:
        return "node is not installed (Debian package nodejs)"
    if not (PROVIDER_DIR / "node_modules" / "oidc-provider").is_dir():
        return "oidc-provider is not installed: run `make oidc-provider`"
    return None


def _new_key(n: int) -> dict[str, Any]:
    key = RSAKey.generate_key(2048, parameters={"kid": f"test-key-{n}", "use": "sig", "alg": "RS256"})
    return dict(key.as_dict(private=True))


@dataclass
class OidcProvider:
    """One provider process on 127.0.0.1:<port>, issuer http://127.0.0.1:<port>."""

    workdir: Path
    redirect_uris: list[str]
    port: int = field(default_factory=free_port)
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    id_token_ttl: int = 120
    _proc: subprocess.Popen[bytes] | None = None
    _key_n: int = 0
    _key: dict[str, Any] = field(default_factory=dict)

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None

    @property
    def kid(self) -> str:
        return str(self._key["kid"])

    def set_account(self, subject: str, email: str, groups: list[str], email_verified: bool = True) -> None:
        """Create or change an account; the provider reads the file at each sign-in."""
        self.accounts[subject] = {"email": email, "email_verified": email_verified, "groups": groups}
        (self.workdir / "accounts.json").write_text(json.dumps(self.accounts))

    def _config(self) -> Path:
        client = {
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "redirect_uris": self.redirect_uris,
            "grant_types": ["authorization_code", "urn:ietf:params:oauth:grant-type:device_code"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "client_secret_basic",
        }
        cfg = {
            "port": self.port,
            "issuer": self.issuer,
            "clients": [client],
            "jwks": {"keys": [self._key]},
            "accounts": str(self.workdir / "accounts.json"),
            "id_token_ttl": self.id_token_ttl,
        }
        path = self.workdir / "provider.json"
        path.write_text(json.dumps(cfg))
        os.chmod(path, 0o600)
        return path

    async def start(self, rotate_key: bool = False) -> OidcProvider:
        if not self._key or rotate_key:
            self._key_n += 1
            self._key = _new_key(self._key_n)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.set_account("nobody", "nobody@example.com", [])
        log = (self.workdir / "provider.log").open("ab")
        self._proc = subprocess.Popen(
            ["node", str(PROVIDER_DIR / "server.mjs"), str(self._config())],
            cwd=PROVIDER_DIR,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        await self._wait_ready()
        return self

    async def _wait_ready(self) -> None:
        url = self.issuer + "/.well-known/openid-configuration"
        async with aiohttp.ClientSession() as s:
            for _ in range(int(START_TIMEOUT_S / 0.1)):
                assert self._proc is not None and self._proc.poll() is None, self.log()
                try:
                    async with s.get(url) as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"the OIDC provider did not start within {START_TIMEOUT_S} s: {self.log()}")

    def log(self) -> str:
        path = self.workdir / "provider.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    async def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.send_signal(signal.SIGTERM)
        for _ in range(100):
            if self._proc.poll() is not None:
                break
            await asyncio.sleep(0.05)
        else:
            self._proc.kill()
            self._proc.wait(5)
        self._proc = None


_FORM = re.compile(r"<form[^>]*action=\"([^\"]+)\"[^>]*>(.*?)</form>", re.S)
_INPUT = re.compile(r"<input[^>]*>", re.S)
_ATTR = re.compile(r"(\w+)=\"([^\"]*)\"")


def forms(page: str) -> list[tuple[str, dict[str, str]]]:
    """Each form of a page: its action and the named inputs with their values."""
    out = []
    for action, body in _FORM.findall(page):
        fields = {}
        for tag in _INPUT.findall(body):
            attrs = dict(_ATTR.findall(tag))
            if "name" in attrs:
                fields[attrs["name"]] = html.unescape(attrs.get("value", ""))
        out.append((html.unescape(action), fields))
    return out


class IdpBrowser:
    """A cookie-keeping HTTP client that goes through the provider's pages as a person would: it
    submits each page's form (the login form filled in as the subject) until a page has none."""

    MAX_STEPS = 8

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.s = session
        self.visited: list[str] = []

    async def walk(self, url: str, subject: str) -> tuple[str, int, str]:
        """Open url and go through the forms. Returns the last URL, status and page."""
        async with self.s.get(url) as r:
            self.visited += [str(h.url) for h in r.history] + [str(r.url)]
            url, status, page = str(r.url), r.status, await r.text()
        for _ in range(self.MAX_STEPS):
            found = forms(page) if not urlsplit(url).path.startswith("/ui/") else []  # back at CVLAN
            if not found:
                break
            action, fields = found[0]
            if "login" in fields or "password" in fields:
                fields.update(login=subject, password="any")
            async with self.s.post(urljoin(url, action), data=fields) as r:
                self.visited += [str(h.url) for h in r.history] + [str(r.url)]
                url, status, page = str(r.url), r.status, await r.text()
        return url, status, page


class OffsetClock(SystemClock):
    """The real clock moved by offset_s: a controller whose clock is off from its provider's."""

    def __init__(self) -> None:
        self.offset_s = 0.0

    def now(self) -> dt.datetime:
        return super().now() + dt.timedelta(seconds=self.offset_s)


@dataclass
class SsoStack:
    """A controller configured with one provider, named "test", and that provider."""

    rc: RunningController
    idp: OidcProvider
    clock: OffsetClock

    def browser(self) -> aiohttp.ClientSession:
        """A fresh browser-like HTTP client: its own cookies, the controller's CA trusted."""
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.rc.client_ssl()),
            cookie_jar=aiohttp.CookieJar(unsafe=True),
        )

    async def sign_in(self, http: aiohttp.ClientSession, subject: str) -> tuple[IdpBrowser, int, str]:
        """Start a web sign-in at the controller and go through the provider's pages as subject."""
        b = IdpBrowser(http)
        _, status, page = await b.walk(self.rc.url + "/ui/oidc/test/start?next=/ui/", subject)
        return b, status, page


async def start_sso(tmp: Path, db_url: str = "") -> SsoStack:
    """Start a provider and a controller that signs in through it (on db_url; default a new SQLite
    file); stop them with stop_sso."""
    clock = OffsetClock()
    idp = OidcProvider(tmp / "idp", [])
    provider = {
        "name": "test",
        "display_name": "Test IdP",
        "issuer": idp.issuer,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "scopes": ["openid", "email", "groups"],
    }
    rc = RunningController(
        tmp / "data",
        db_url or f"sqlite+aiosqlite:///{tmp / 'cvlan.db'}",
        clock=clock,
        oidc_providers=[provider],
    )
    idp.redirect_uris = [rc.url + "/ui/oidc/callback"]
    await idp.start()
    try:
        await rc.start()
    except BaseException:
        await idp.stop()
        raise
    return SsoStack(rc, idp, clock)


async def stop_sso(stack: SsoStack) -> None:
    await stack.rc.stop()
    await stack.idp.stop()
