"""Browser tests: one controller and one headless Chromium per test module, on a module event loop.

Debian's Chromium is used as it is (no browser download); each browser context is a fresh profile.
Set CVLAN_SCREENSHOTS=1 to write the screenshots the tests take into docs/screenshots/."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from cvlan.controller.auth import SYSTEM
from cvlan.controller.db.models import Node
from cvlan.controller.ops import cvlans, tenants, users
from cvlan.controller.ops.context import resolve_tenant
from cvlan.devtools.harness.enrol import create_node
from tests.harness.controller import RunningController

playwright_api = pytest.importorskip("playwright.async_api")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PASSWORD = "correct-horse-battery"
REPO = Path(__file__).resolve().parents[2]


@dataclass
class UiEnv:
    """A running controller with two tenants and users of each role, and a browser to drive it."""

    rc: RunningController
    browser: Any
    shots: Path
    users: dict[str, str] = field(default_factory=dict)
    _errors: dict[int, list[str]] = field(default_factory=dict)

    def errors(self, page: Any) -> list[str]:
        """Script errors and console errors the page has logged (CSP violations show up here)."""
        return self._errors.setdefault(id(page), [])

    @property
    def url(self) -> str:
        return self.rc.url

    async def page(self, email: str | None = None) -> Any:
        """A page in a fresh browser context (own cookies), signed in as email if given."""
        context = await self.browser.new_context(
            ignore_https_errors=True, viewport={"width": 1360, "height": 860}, locale="en-US"
        )
        context.set_default_timeout(10_000)
        page = await context.new_page()
        page.on("dialog", lambda d: d.accept())
        errors = self.errors(page)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        if email is not None:
            await sign_in(page, self.url, email, PASSWORD)
        return page

    async def shot(self, page: Any, name: str) -> Path:
        path = self.shots / f"{name}.png"
        await page.screenshot(path=str(path), full_page=True)
        if os.environ.get("CVLAN_SCREENSHOTS"):
            dest = REPO / "docs" / "screenshots"
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, dest / path.name)
        return path

    async def register_node(
        self,
        tenant: str,
        token_text: str,
        hostname: str,
        *,
        online: bool = True,
        endpoints: list[str] | None = None,
    ) -> Node:
        """What a node's registration does on the controller: consume the token, create the node.
        Then record liveness as a poll would (last seen, endpoints, certificate expiry)."""
        ctx = self.rc.c.ctx  # type: ignore[union-attr]
        async with ctx.tx() as s:
            n = await create_node(ctx, s, token_text, hostname, "Linux 6.1 x86_64")
            now = ctx.now()
            n.last_seen = now - dt.timedelta(seconds=4 if online else 3 * 3600)
            n.endpoints = endpoints if endpoints is not None else ["198.51.100.7:41641", "192.168.1.20:41641"]
            n.cert_not_after = now + dt.timedelta(days=7)
            n.health = {"peers_total": 3, "peers_direct": 2, "peers_relay": 1, "applied_version": 1}
        return n

    async def issue_token(self, tenant: str, cvlan: str, **kw: Any) -> str:
        ctx = self.rc.c.ctx  # type: ignore[union-attr]
        async with ctx.tx() as s:
            t = await resolve_tenant(s, SYSTEM, tenant)
            _, _, text = await cvlans.create_token(
                ctx,
                s,
                SYSTEM,
                t,
                cvlan,
                reusable=kw.get("reusable", False),
                max_uses=None,
                expires_in=None,
                tags=kw.get("tags", []),
            )
        return text


async def sign_in(page: Any, url: str, email: str, password: str) -> None:
    await page.goto(url + "/ui/signin")
    await page.fill("#email", email)
    await page.fill("#password", password)
    await submit(page, "button[type=submit]")


async def submit(page: Any, target: Any) -> None:
    """Click what submits a form or follows a link (a selector or a locator) and wait for the page
    the server answers with, redirects included."""
    async with page.expect_navigation():
        await (page.click(target) if isinstance(target, str) else target.click())


async def seed(rc: RunningController) -> dict[str, str]:
    """Tenants acme (CVLANs lab, staging) and globex (secret-lab); a platform admin; acme's admin,
    operator and auditor; globex's admin."""
    ctx = rc.c.ctx  # type: ignore[union-attr]
    people = {
        "root": "root@example.com",
        "alice": "alice@acme.example",
        "olga": "olga@acme.example",
        "audrey": "audrey@acme.example",
        "bob": "bob@globex.example",
    }
    async with ctx.tx() as s:
        await users.create_platform_admin(ctx, s, people["root"], PASSWORD)
        acme = await tenants.create(ctx, s, SYSTEM, "acme", "Acme Corp")
        globex = await tenants.create(ctx, s, SYSTEM, "globex", "Globex")
        for who, tenant, role in (
            ("alice", acme, "admin"),
            ("olga", acme, "operator"),
            ("audrey", acme, "auditor"),
            ("bob", globex, "admin"),
        ):
            await users.create_user(ctx, s, SYSTEM, tenant, people[who], role, PASSWORD)
        await cvlans.create(ctx, s, SYSTEM, globex, "secret-lab", None, "mesh")
        await cvlans.create(ctx, s, SYSTEM, acme, "lab", None, "mesh")
        await cvlans.create(ctx, s, SYSTEM, acme, "staging", None, "hub")
    return people


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def ui(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[UiEnv]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (Debian package chromium)")
    tmp = tmp_path_factory.mktemp("ui")
    rc = await RunningController(tmp / "data", f"sqlite+aiosqlite:///{tmp / 'cvlan.db'}").start()
    people = await seed(rc)
    pw = await playwright_api.async_playwright().start()
    browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    shots = tmp / "shots"
    shots.mkdir()
    try:
        yield UiEnv(rc, browser, shots, people)
    finally:
        await browser.close()
        await pw.stop()
        await rc.stop()
