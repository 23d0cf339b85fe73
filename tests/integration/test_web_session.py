"""Web UI sessions over HTTP on both databases: sign-in, CSRF, lockout, sign-out revocation."""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from cvlan.controller.auth import SYSTEM
from cvlan.controller.db.models import Tenant
from cvlan.controller.ops import cvlans, tenants, users
from tests.harness.controller import RunningController
from tests.harness.seed import enrol_node

PW = "correct-horse-battery"


async def _seed(rc: RunningController) -> None:
    ctx = rc.c.ctx  # type: ignore[union-attr]
    async with ctx.tx() as s:
        t = await tenants.create(ctx, s, SYSTEM, "acme")
        await users.create_user(ctx, s, SYSTEM, t, "ann@acme.example", "operator", PW)


def _client(rc: RunningController) -> aiohttp.ClientSession:
    ctx: ssl.SSLContext = rc.client_ssl()
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ctx), cookie_jar=aiohttp.CookieJar(unsafe=True)
    )


async def admin_with_node(rc: RunningController, node_name: str) -> tuple[dict[str, Any], Tenant]:
    """Tenant acme with admin ann (password PW) and CVLAN office, and a node enrolled in it."""
    ctx = rc.c.ctx  # type: ignore[union-attr]
    async with ctx.tx() as s:
        t = await tenants.create(ctx, s, SYSTEM, "acme")
        await users.create_user(ctx, s, SYSTEM, t, "ann@acme.example", "admin", PW)
        c = await cvlans.create(ctx, s, SYSTEM, t, "office", None, "mesh")
        _, _, text = await cvlans.create_token(
            ctx, s, SYSTEM, t, c.name, reusable=False, max_uses=None, expires_in=None, tags=[]
        )
    return await enrol_node(rc, text, node_name), t


async def form_page(http: aiohttp.ClientSession, url: str) -> tuple[str, str]:
    """A signed-in page and its CSRF token."""
    async with http.get(url) as r:
        body = await r.text()
    m = re.search(r'name="_csrf" value="([^"]+)"', body)
    assert r.status == 200 and m is not None
    return body, m.group(1)


async def _sign_in(http: aiohttp.ClientSession, url: str, password: str) -> tuple[int, str]:
    async with http.get(url + "/ui/signin") as r:
        csrf = re.search(r'name="_csrf" value="([^"]+)"', await r.text())
    assert csrf is not None
    form = {"_csrf": csrf.group(1), "email": "ann@acme.example", "password": password, "next": "/ui/"}
    async with http.post(url + "/ui/signin", data=form, allow_redirects=False) as r:
        return r.status, await r.text()


async def test_sign_in_csrf_and_sign_out(controller: RunningController) -> None:
    await _seed(controller)
    url = controller.url
    async with _client(controller) as http:
        async with http.get(url + "/ui/t/acme/", allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"].startswith("/ui/signin")
        assert (await _sign_in(http, url, PW))[0] == 303
        (entry,) = (await controller.api().get("/api/v1/audit?action=user.signin")).ok()["items"]
        assert entry["actor"] == "user:ann@acme.example" and entry["after"] == {"method": "password"}
        async with http.get(url + "/ui/t/acme/") as r:
            page = await r.text()
            assert r.status == 200 and "ann@acme.example" in page
        csrf = re.search(r'data-csrf="([^"]+)"', page)
        assert csrf is not None
        # The session authenticates the UI's API reads; writes also need the CSRF header.
        async with http.get(url + "/api/v1/tenants/acme/cvlans") as r:
            assert r.status == 200
        async with http.post(url + "/api/v1/tenants/acme/cvlans", json={"name": "a"}) as r:
            assert r.status == 403
        hdr = {"X-CSRF-Token": csrf.group(1)}
        async with http.post(url + "/api/v1/tenants/acme/cvlans", json={"name": "a"}, headers=hdr) as r:
            assert r.status == 201
        async with http.post(url + "/ui/t/acme/cvlans", data={"name": "b"}) as r:
            assert r.status == 403 and "did not come from this site" in await r.text()
        cookie = http.cookie_jar.filter_cookies(URL(url))["cvlan_session"].value
        async with http.post(url + "/ui/signout", data={"_csrf": csrf.group(1)}, allow_redirects=False) as r:
            assert r.status == 303
    # Replaying the signed-out cookie is refused (the revocation is in the database).
    async with _client(controller) as http:
        http.cookie_jar.update_cookies({"cvlan_session": cookie})
        async with http.get(url + "/ui/t/acme/", allow_redirects=False) as r:
            assert r.status == 303
        async with http.get(url + "/api/v1/tenants/acme/cvlans") as r:
            assert r.status == 401


async def test_lockout_after_repeated_failures_survives_the_right_password(
    controller: RunningController,
) -> None:
    await _seed(controller)
    async with _client(controller) as http:
        for _ in range(5):
            status, body = await _sign_in(http, controller.url, "wrong-password")
            assert status == 401 and "not correct" in body
        status, body = await _sign_in(http, controller.url, PW)
        assert status == 401 and "Too many failed sign-ins" in body
    r = await controller.api().get("/api/v1/audit?action=user.locked")
    assert r.ok()["total"] == 1
    # Every attempt is audited, the one refused because the account is locked too.
    failed = (await controller.api().get("/api/v1/audit?action=user.signin_failed")).ok()["items"]
    assert [e["after"]["reason"] for e in reversed(failed)] == ["wrong password"] * 5 + [
        "account locked after repeated failures"
    ]
    assert {e["target_id"] for e in failed} == {"ann@acme.example"}


async def _cookie_flags_through_front(rc: RunningController) -> str:
    """Sign in over plain HTTP as a TLS front would forward it; the session cookie's Set-Cookie.
    Cookies are passed by hand: a client's jar would not send a Secure cookie over http://, where
    the browser behind the front, on https://, would."""
    await _seed(rc)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        fwd = {"X-Forwarded-Proto": "https"}
        async with http.get(rc.url + "/ui/signin", headers=fwd) as r:
            csrf = re.search(r'name="_csrf" value="([^"]+)"', await r.text())
            jar = [c.split(";", 1)[0] for c in r.headers.getall("Set-Cookie", [])]
        assert csrf is not None
        form = {"_csrf": csrf.group(1), "email": "ann@acme.example", "password": PW, "next": "/ui/"}
        hdr = {**fwd, "Cookie": "; ".join(jar)}
        async with http.post(rc.url + "/ui/signin", data=form, headers=hdr, allow_redirects=False) as r:
            assert r.status == 303
            (cookie,) = [c for c in r.headers.getall("Set-Cookie") if c.startswith("cvlan_session=")]
            return cookie


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_session_cookie_is_secure_behind_a_trusted_front_given_as_a_network(
    db_url: str, tmp_path: Path
) -> None:
    """trusted_proxies takes networks for the web UI as it does for the node API: a front at
    127.0.0.1, listed as 127.0.0.0/8, saying the browser came over TLS gets a Secure cookie; the same
    header from an address not listed is not believed."""
    for trusted, want in ((["127.0.0.0/8"], True), (["192.0.2.0/24"], False)):
        db = db_url.replace("cvlan.db", f"front-{want}.db")
        rc = await RunningController(tmp_path / str(want), db, tls=False, trusted_proxies=trusted).start()
        try:
            assert rc.url.startswith("http://")
            flags = [f.strip().lower() for f in (await _cookie_flags_through_front(rc)).split(";")]
            assert ("secure" in flags) is want, flags
        finally:
            await rc.stop()


async def test_audit_page_number_of_odd_digits_shows_the_first_page(controller: RunningController) -> None:
    """'²' passed str.isdigit() and int() then raised: the page was a 500."""
    await _seed(controller)
    url = controller.url
    async with _client(controller) as http:
        assert (await _sign_in(http, url, PW))[0] == 303
        for pg in ("²", "٣", "99999999999999999999999", "1"):
            async with http.get(url + "/ui/t/acme/audit", params={"page": pg}) as r:
                assert r.status == 200, (pg, r.status)
