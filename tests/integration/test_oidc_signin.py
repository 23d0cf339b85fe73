"""OpenID Connect sign-in against a real provider (oidc-provider on loopback): the web flow with
PKCE, group-to-role mapping re-evaluated at each sign-in, key rotation, `cvlan login` with the
device grant, and the bad inputs a provider's answer can carry (replayed state, unverified email,
expired or future token, provider down). Tokens a real provider cannot be made to issue (another
issuer, another audience, a bad signature) are in tests/unit/test_oidc_tokens.py."""

from __future__ import annotations

import asyncio
import os
import re
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import func, select

from cvlan.controller.db.models import AuditEntry, Membership, OidcIdentity, OidcPending, User
from cvlan.devtools.pgcluster import PgCluster
from tests.harness.oidc import IdpBrowser, SsoStack, missing, start_sso, stop_sso

pytestmark = [
    pytest.mark.skipif(missing() is not None, reason=str(missing())),
    pytest.mark.asyncio(loop_scope="module"),
]


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["sqlite", "postgresql"])
async def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[SsoStack]:
    """One provider and controller per database for the module (each test signs in its own people):
    every test runs on SQLite and on PostgreSQL, like the other integration tests."""
    tmp = tmp_path_factory.mktemp("sso")
    db_url = ""
    if request.param == "postgresql":
        cluster: PgCluster = request.getfixturevalue("pg_cluster")
        db_url = cluster.create_db(f"sso{os.getpid()}_{tmp.name}")
    stack = await start_sso(tmp, db_url)
    api = stack.rc.api()
    try:
        (await api.post("/api/v1/tenants", {"name": "acme"})).ok()
        (await api.post("/api/v1/tenants", {"name": "globex"})).ok()
        body = {"provider": "test", "group": "net-admins", "role": "admin"}
        (await api.post("/api/v1/tenants/acme/oidc-mappings", body)).ok()
        body = {"provider": "test", "group": "everyone", "role": "auditor"}
        (await api.post("/api/v1/tenants/globex/oidc-mappings", body)).ok()
        yield stack
    finally:
        await stop_sso(stack)


@pytest_asyncio.fixture(loop_scope="module")
async def sso(stack: SsoStack) -> AsyncIterator[SsoStack]:
    stack.clock.offset_s = 0
    yield stack
    stack.clock.offset_s = 0
    if not stack.idp.running:
        await stack.idp.start()


async def _count(stack: SsoStack, model: type, *where: object) -> int:
    ctx = stack.rc.c.ctx  # type: ignore[union-attr]
    async with ctx.tx() as s:
        return int(await s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


async def _audit(stack: SsoStack, action: str, actor: str | None = None) -> list[AuditEntry]:
    ctx = stack.rc.c.ctx  # type: ignore[union-attr]
    stmt = select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id)
    if actor is not None:
        stmt = stmt.where(AuditEntry.actor == actor)
    async with ctx.tx() as s:
        return list(await s.scalars(stmt))


async def test_signin_lands_in_the_mapped_tenant_with_the_mapped_role(sso: SsoStack) -> None:
    sso.idp.set_account("alice", "Alice@Acme.example", ["net-admins", "unmapped"])
    async with sso.browser() as http:
        _, status, page = await sso.sign_in(http, "alice")
        assert status == 200 and "Signed in as alice@acme.example" in page
        async with http.get(sso.rc.url + "/ui/") as r:
            assert str(r.url).endswith("/ui/t/acme/"), r.url
        async with http.get(sso.rc.url + "/ui/t/acme/users") as r:  # an admin's page
            assert r.status == 200
        async with http.get(sso.rc.url + "/ui/t/globex/", allow_redirects=False) as r:
            assert r.status == 404  # no role there: the tenant does not exist for alice
    entries = await _audit(sso, "user.signin", "user:alice@acme.example")
    assert entries[-1].after is not None and entries[-1].after["method"] == "oidc"
    assert await _count(sso, OidcIdentity, OidcIdentity.subject == "alice") == 1


async def test_a_lost_group_takes_the_role_away_and_ends_sessions(sso: SsoStack) -> None:
    sso.idp.set_account("bob", "bob@acme.example", ["net-admins", "everyone"])
    async with sso.browser() as first:
        await sso.sign_in(first, "bob")
        async with first.get(sso.rc.url + "/ui/t/acme/", allow_redirects=False) as r:
            assert r.status == 200
        sso.idp.set_account("bob", "bob@acme.example", ["everyone"])
        async with sso.browser() as second:
            _, status, _ = await sso.sign_in(second, "bob")
            assert status == 200
            async with second.get(sso.rc.url + "/ui/") as r:
                assert str(r.url).endswith("/ui/t/globex/"), r.url
            async with second.get(sso.rc.url + "/ui/t/acme/", allow_redirects=False) as r:
                assert r.status == 404
        async with first.get(sso.rc.url + "/ui/t/acme/", allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"].startswith("/ui/signin")  # session ended
    lost = await _audit(sso, "user.role_lost", "user:bob@acme.example")
    assert [e.before for e in lost] == [{"role": "admin"}]


async def test_rotated_provider_keys_are_fetched_again(sso: SsoStack) -> None:
    sso.idp.set_account("carol", "carol@acme.example", ["net-admins"])
    async with sso.browser() as http:
        assert (await sso.sign_in(http, "carol"))[1] == 200
    old = sso.idp.kid
    await sso.idp.stop()
    await sso.idp.start(rotate_key=True)
    assert sso.idp.kid != old
    async with sso.browser() as http:
        _, status, page = await sso.sign_in(http, "carol")
        assert status == 200 and "Signed in as carol@acme.example" in page


async def test_a_replayed_callback_is_refused(sso: SsoStack) -> None:
    sso.idp.set_account("dave", "dave@acme.example", ["net-admins"])
    failures = len(await _audit(sso, "user.signin_failed"))
    async with sso.browser() as http:
        b, status, _ = await sso.sign_in(http, "dave")
        assert status == 200
        callback = next(u for u in b.visited if "/ui/oidc/callback?" in u)
    async with sso.browser() as http, http.get(callback) as r:
        assert r.status == 401
        assert "This sign-in has expired or was already used" in await r.text()
        assert "cvlan_session" not in {c.key for c in http.cookie_jar}
    assert len(await _audit(sso, "user.signin", "user:dave@acme.example")) == 1
    assert len(await _audit(sso, "user.signin_failed")) == failures + 1


async def test_an_unverified_email_is_refused_and_nothing_is_created(sso: SsoStack) -> None:
    sso.idp.set_account("eve", "eve@acme.example", ["net-admins"], email_verified=False)
    async with sso.browser() as http:
        _, status, page = await sso.sign_in(http, "eve")
    assert status == 401
    assert "has not verified this account&#39;s email address" in page
    assert await _count(sso, User, User.email == "eve@acme.example") == 0
    assert await _count(sso, OidcIdentity, OidcIdentity.subject == "eve") == 0
    failed = await _audit(sso, "user.signin_failed")
    assert failed[-1].after is not None and "email" in failed[-1].after["reason"]


@pytest.mark.parametrize(
    ("offset_s", "message"),
    [(300, "the ID token has expired"), (-300, "the ID token was issued in the future")],
)
async def test_a_token_outside_its_time_is_refused(sso: SsoStack, offset_s: float, message: str) -> None:
    # The provider issues ID tokens for 120 s and the controller allows 60 s of skew: a controller
    # clock 300 s ahead sees an expired token, 300 s behind one issued in the future.
    sso.idp.set_account("frank", "frank@acme.example", ["net-admins"])
    async with sso.browser() as http:
        b = IdpBrowser(http)
        async with http.get(sso.rc.url + "/ui/oidc/test/start", allow_redirects=False) as r:
            authorize = r.headers["Location"]
        sso.clock.offset_s = offset_s  # the pending sign-in (10 min) stays valid either way
        _, status, page = await b.walk(authorize, "frank")
    assert status == 401 and message in page.replace("&#39;", "'"), page[-800:]
    assert await _count(sso, User, User.email == "frank@acme.example") == 0


async def test_a_provider_that_is_down_is_named_and_nothing_is_created(sso: SsoStack) -> None:
    await sso.idp.stop()
    sso.clock.offset_s = 7200  # past the cached discovery document: it must be read again
    pending = await _count(sso, OidcPending)
    async with sso.browser() as http, http.get(sso.rc.url + "/ui/oidc/test/start") as r:
        assert r.status == 503
        assert "Identity provider Test IdP is unreachable" in await r.text()
    assert await _count(sso, OidcPending) == pending
    assert (await _audit(sso, "user.signin_failed"))[-1].after["provider"] == "test"  # type: ignore[index]


async def test_local_passwords_can_be_disabled_per_tenant(sso: SsoStack) -> None:
    api = sso.rc.api()
    body = {"email": "gina@acme.example", "role": "operator", "password": "correct-horse-battery"}
    (await api.post("/api/v1/tenants/acme/users", body)).ok()
    (await api.request("PUT", "/api/v1/tenants/acme/signin-policy", json={"local_passwords": False})).ok()
    async with sso.browser() as http:
        async with http.get(sso.rc.url + "/ui/signin") as r:
            page = await r.text()
        assert "Sign in with Test IdP" in page
        csrf = re.search(r'name="_csrf" value="([^"]+)"', page)
        assert csrf is not None
        form = {"_csrf": csrf.group(1), "email": body["email"], "password": body["password"], "next": "/ui/"}
        async with http.post(sso.rc.url + "/ui/signin", data=form, allow_redirects=False) as r:
            assert r.status == 401
            assert "Members of tenant acme sign in with their identity provider" in await r.text()
    failed = await _audit(sso, "user.signin_failed")
    assert failed[-1].after == {
        "method": "password",
        "provider": "",
        "reason": "local passwords are disabled in tenant acme",
    }


async def test_cvlan_login_with_the_device_grant(sso: SsoStack, tmp_path: Path) -> None:
    sso.idp.set_account("hank", "hank@acme.example", ["net-admins"])
    ca = tmp_path / "ca.pem"
    ca.write_bytes(sso.rc.c.ca.cert_pem)  # type: ignore[union-attr]
    conf = tmp_path / "home" / "admin.conf"
    cmd = [sys.executable, "-m", "cvlan.cli.admin", "--config", str(conf), "--server", sso.rc.url]
    proc = await asyncio.create_subprocess_exec(
        *cmd, "login", "--ca-file", str(ca), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stderr is not None
    first = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
    link = first.split("open ", 1)[1].strip()
    async with sso.browser() as http:
        _, status, page = await IdpBrowser(http).walk(link, "hank")
        assert status == 200 and "Sign-in Success" in page
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err
    assert "Signed in as hank@acme.example" in out.decode()
    assert stat.S_IMODE(os.stat(conf).st_mode) == 0o600
    token = next(
        line.split(" = ", 1)[1] for line in conf.read_text().splitlines() if line.startswith("token")
    )
    users = (await sso.rc.api(token).get("/api/v1/tenants/acme/users")).ok()
    assert "hank@acme.example" in [u["email"] for u in users["items"]]
    assert (await sso.rc.api(token).get("/api/v1/tenants/globex")).status == 404
    hank = select(User.id).where(User.email == "hank@acme.example").scalar_subquery()
    assert await _count(sso, Membership, Membership.user_id == hank, Membership.via_oidc.is_(True)) == 1
