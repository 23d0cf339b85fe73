"""The web UI in a real browser: sign-in, the operator's flow, live status, errors, RBAC, isolation."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
from playwright.async_api import expect

from cvlan.client.controller import ControlError
from cvlan.controller.auth import SYSTEM
from cvlan.controller.nodeapi.handlers import NODEAPI_KEY
from cvlan.controller.ops import cvlans, infra, nodes, subnets, users
from cvlan.controller.ops.context import resolve_tenant
from cvlan.wire.pb import node_pb2 as pb
from tests.harness.nodes import enrol
from tests.ui.conftest import PASSWORD, UiEnv, sign_in, submit

pytestmark = [pytest.mark.ui, pytest.mark.asyncio(loop_scope="module")]


async def _count_cvlans(ui: UiEnv, tenant: str) -> int:
    ctx = ui.rc.c.ctx  # type: ignore[union-attr]
    async with ctx.tx() as s:
        t = await resolve_tenant(s, SYSTEM, tenant)
        return (await cvlans.list_(s, SYSTEM, t, 1000, 0))[1]


async def test_sign_in_wrong_password_then_right_then_out(ui: UiEnv) -> None:
    page = await ui.page()
    await page.goto(ui.url + "/")
    assert page.url.startswith(ui.url + "/ui/signin")
    await ui.shot(page, "signin")
    await sign_in(page, ui.url, ui.users["alice"], "wrong-password!")
    assert "not correct" in await page.inner_text("#signin-error")
    await sign_in(page, ui.url, ui.users["alice"], PASSWORD)
    assert page.url == ui.url + "/ui/t/acme/"
    resp = await page.reload()
    assert resp is not None and "frame-ancestors 'none'" in resp.headers["content-security-policy"]
    cookie = next(c for c in await page.context.cookies() if c["name"] == "cvlan_session")
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
    await submit(page, "#signout")
    assert page.url.startswith(ui.url + "/ui/signin")
    # The old cookie no longer works, even if replayed.
    other = await ui.page()
    await other.context.add_cookies([{**cookie}])
    await other.goto(ui.url + "/ui/t/acme/")
    assert "/ui/signin" in other.url


async def test_repeated_failures_lock_the_account(ui: UiEnv) -> None:
    ctx = ui.rc.c.ctx  # type: ignore[union-attr]
    async with ctx.tx() as s:
        acme = await resolve_tenant(s, SYSTEM, "acme")
        await users.create_user(ctx, s, SYSTEM, acme, "locky@acme.example", "operator", PASSWORD)
    page = await ui.page()
    for _ in range(5):
        await sign_in(page, ui.url, "locky@acme.example", "not-the-password")
        assert "not correct" in await page.inner_text("#signin-error")
    await sign_in(page, ui.url, "locky@acme.example", PASSWORD)
    assert "Too many failed sign-ins" in await page.inner_text("#signin-error")
    assert "/ui/signin" in page.url


async def test_operator_flow_cvlan_token_node_revoke_delete_audit(ui: UiEnv) -> None:
    page = await ui.page(ui.users["alice"])
    await page.goto(ui.url + "/ui/t/acme/cvlans")
    await page.fill("#create-cvlan #f-name", "office")
    await submit(page, "#create-cvlan button[type=submit]")
    assert page.url.endswith("/ui/t/acme/cvlans/office")
    assert "CVLAN office created" in await page.inner_text("#flash")
    subnet = re.search(r"\d+\.\d+\.\d+\.\d+/\d+", await page.inner_text(".meta"))
    assert subnet is not None

    # Enrollment token: shown once, with the join command.
    await submit(page, "text=Add a node")
    assert await page.input_value("#f-cvlan") == "office"
    await page.check("input[name=kind][value=reusable]")
    await page.fill("#f-tags", "tag:laptop")
    await submit(page, "#create-token button[type=submit]")
    token_text = (await page.inner_text("#enrollment-token")).strip()
    assert re.fullmatch(r"cvet_\S+", token_text), token_text
    # The whole sequence for a fresh machine: install the package, then join with the token from
    # stdin or a file - never the token itself on a command line.
    steps = (await page.inner_text("#join-steps")).strip().splitlines()
    pin = ui.rc.c.ca.fingerprint if ui.rc.c else ""
    join = f"cvlan-ctrl join --server {ui.url} --ca-pin {pin}"
    assert [x for x in steps if not x.startswith("#")] == [
        "apt-get install ./cvlan-client_*.deb",
        f"{join} --token -",
        f"{join} --token-file /root/cvlan.token",
    ]
    assert token_text not in "\n".join(steps)
    await ui.shot(page, "token-created")
    await page.goto(ui.url + "/ui/t/acme/tokens")
    assert token_text not in await page.content()  # never shown again

    # A node registers with that token through the node API; the open CVLAN page shows it
    # without a reload, then online with its endpoints and paths once it has polled.
    await page.goto(ui.url + "/ui/t/acme/cvlans/office")
    assert await page.is_visible("#members-empty")
    await page.evaluate("window.__marker = 'same page'")
    laptop = await enrol(ui.rc, token_text, "laptop-1")
    row = page.locator("#members tr", has_text="laptop-1")
    await row.wait_for()
    assert "never" in await row.inner_text() and await row.locator(".dot.off").count() == 1
    health = pb.HealthSummary(peers_total=1, peers_direct=1, applied_version=1)
    await laptop.client.poll(0, endpoints=["198.51.100.7:41641", "192.168.1.20:41641"], health=health)
    await row.locator(".dot.on").wait_for()
    await expect(row).to_contain_text("198.51.100.7:41641", timeout=15_000)
    assert "1 direct" in await row.inner_text()
    assert await page.evaluate("window.__marker") == "same page"
    assert "1 node" in await page.inner_text("#node-count")
    await laptop.client.close()
    await ui.register_node("acme", token_text, "build-server", online=False, endpoints=["203.0.113.9:51820"])
    await page.locator("#members tr", has_text="build-server").wait_for()
    await ui.shot(page, "cvlan-members")

    # Revoke the token: listed as revoked, and registration with it now fails.
    await page.goto(ui.url + "/ui/t/acme/tokens")
    prefix = token_text.split("_")[1]
    await submit(page, f"tr[data-token='{prefix}'] button:has-text('Revoke')")
    assert "revoked" in await page.inner_text(f"tr[data-token='{prefix}']")
    with pytest.raises(ControlError) as refused:
        await enrol(ui.rc, token_text, "too-late")
    assert refused.value.status == 401 and "revoked" in refused.value.message
    await ui.shot(page, "tokens")

    # Node detail, then delete it.
    await page.goto(ui.url + "/ui/t/acme/nodes/laptop-1")
    assert "tag:laptop" in await page.inner_text(".kv")
    await ui.shot(page, "node")
    await submit(page, "#delete-node button")
    assert page.url.endswith("/ui/t/acme/cvlans/office")
    assert "laptop-1 deleted" in await page.inner_text("#flash")
    assert await page.locator("#members tr", has_text="laptop-1").count() == 0

    # The audit log shows what was done, by whom; filters narrow it.
    await page.goto(ui.url + "/ui/t/acme/audit")
    table = await page.inner_text("#audit-table")
    for action in ("cvlan.create", "token.create", "node.register", "token.revoke", "node.delete"):
        assert action in table, action
    assert "user:alice@acme.example" in table
    await ui.shot(page, "audit")
    await page.fill("#q-action", "node.delete")
    await submit(page, "#audit-filters button")
    rows = await page.locator("#audit-table tbody tr").all_inner_texts()
    assert len(rows) == 1 and "laptop-1" in rows[0]
    assert ui.errors(page) == []  # no script errors, no CSP violations along the way


async def test_form_errors_are_shown_next_to_the_field_and_nothing_is_written(ui: UiEnv) -> None:
    page = await ui.page(ui.users["olga"])
    before = await _count_cvlans(ui, "acme")
    await page.goto(ui.url + "/ui/t/acme/cvlans")
    await page.fill("#create-cvlan #f-name", "bad name!")
    await submit(page, "#create-cvlan button[type=submit]")
    err = await page.inner_text("#create-cvlan #err-name")
    assert "is not valid" in err and "letters, digits" in err
    assert await page.input_value("#create-cvlan #f-name") == "bad name!"
    await ui.shot(page, "form-error")
    await page.fill("#create-cvlan #f-name", "lab2")
    await page.fill("#create-cvlan #f-subnet", "10.0.0.0/33")
    await submit(page, "#create-cvlan button[type=submit]")
    assert "subnet" in (await page.inner_text("#create-cvlan #err-subnet")).lower()
    await page.fill("#create-cvlan #f-name", "lab")
    await page.fill("#create-cvlan #f-subnet", "")
    await submit(page, "#create-cvlan button[type=submit]")
    assert "already exists" in await page.inner_text("#create-cvlan #err-name")
    assert await _count_cvlans(ui, "acme") == before

    await page.goto(ui.url + "/ui/t/acme/tokens")
    await page.select_option("#f-cvlan", "lab")
    await page.fill("#f-expires", "soon")
    await submit(page, "#create-token button[type=submit]")
    assert "expected a number and a unit" in await page.inner_text("#err-expires")
    assert await page.locator("#token-created").count() == 0


async def test_auditor_sees_no_edit_controls_and_the_server_refuses_edits(ui: UiEnv) -> None:
    page = await ui.page(ui.users["audrey"])
    await page.goto(ui.url + "/ui/t/acme/cvlans")
    assert await page.locator("#cvlan-table").count() == 1
    assert await page.locator("#create-cvlan").count() == 0
    await page.goto(ui.url + "/ui/t/acme/cvlans/lab")
    assert await page.locator("form[action$='/delete'], #edit-cvlan").count() == 0
    assert await page.locator("text=Add a node").count() == 0
    await page.goto(ui.url + "/ui/t/acme/tokens")
    assert await page.locator("#create-token").count() == 0
    await page.goto(ui.url + "/ui/t/acme/users")
    assert await page.locator("#create-user").count() == 0
    # Forge the requests a form would send, with her valid CSRF token: refused, nothing written.
    csrf = await page.get_attribute("body", "data-csrf")
    before = await _count_cvlans(ui, "acme")
    r = await page.request.post(
        ui.url + "/ui/t/acme/cvlans", form={"_csrf": csrf or "", "name": "sneaky", "mode": "mesh"}
    )
    assert r.status == 403 and "your role in this tenant does not allow it" in await r.text()
    r = await page.request.post(ui.url + "/ui/t/acme/cvlans/lab/delete", form={"_csrf": csrf or ""})
    assert r.status == 403
    assert await _count_cvlans(ui, "acme") == before
    # The JSON API refuses the same write made with her session.
    r = await page.request.post(
        ui.url + "/api/v1/tenants/acme/cvlans", data={"name": "sneaky"}, headers={"X-CSRF-Token": csrf or ""}
    )
    assert r.status == 403


async def test_a_user_of_one_tenant_cannot_open_another_tenants_pages(ui: UiEnv) -> None:
    page = await ui.page(ui.users["alice"])
    for path in ("/ui/t/globex/", "/ui/t/globex/cvlans/secret-lab", "/ui/t/globex/audit", "/ui/t/2/cvlans"):
        r = await page.goto(ui.url + path)
        assert r is not None and r.status == 404, path
        assert "secret-lab" not in await page.content()
    assert await page.locator("#tenant-switcher a", has_text="Globex").count() == 0
    r = await page.goto(ui.url + "/ui/platform/")
    assert r is not None and r.status == 403
    bob = await ui.page(ui.users["bob"])
    r = await bob.goto(ui.url + "/ui/t/acme/cvlans/office")
    assert r is not None and r.status == 404


async def test_forms_without_the_csrf_token_are_refused(ui: UiEnv) -> None:
    page = await ui.page(ui.users["alice"])
    before = await _count_cvlans(ui, "acme")
    r = await page.request.post(ui.url + "/ui/t/acme/cvlans", form={"name": "forged", "mode": "mesh"})
    assert r.status == 403
    r = await page.request.post(ui.url + "/api/v1/tenants/acme/cvlans", data={"name": "forged"})
    assert r.status == 403
    assert await _count_cvlans(ui, "acme") == before


async def test_platform_admin_sees_health_tenants_and_infrastructure(ui: UiEnv) -> None:
    page = await ui.page(ui.users["root"])
    assert page.url == ui.url + "/ui/platform/"
    assert "acme" in await page.inner_text("#tenant-table")
    await expect(page.locator("[data-h='api_requests_per_s']")).not_to_have_text("…", timeout=15_000)
    assert await page.inner_text("[data-h='db.status']") == "ok"
    await ui.shot(page, "platform")
    await page.goto(ui.url + "/ui/platform/infra")
    await page.fill("#create-region #f-name", "eu-west")
    await submit(page, "#create-region button")
    await page.select_option("#create-relay #f-region", "eu-west")
    await page.fill("#create-relay #f-name", "relay-1")
    await page.fill("#create-relay #f-url", "not a url")
    await submit(page, "#create-relay button")
    assert "expected an http(s):// URL" in await page.inner_text("#create-relay #err-url")
    await page.fill("#create-relay #f-url", "https://relay1.example.com")
    await page.fill("#create-relay #f-stun", "relay1.example.com:3478")
    await submit(page, "#create-relay button")
    assert (await page.inner_text("#start-command")).startswith("cvlan-relay --server ")
    await ui.shot(page, "infra")
    # The switcher takes the platform admin into any tenant.
    await page.click("#tenant-switcher summary")

    await submit(page, "#tenant-switcher a:has-text('Acme Corp')")
    assert page.url == ui.url + "/ui/t/acme/"


async def test_node_rename_and_move(ui: UiEnv) -> None:
    token = await ui.issue_token("acme", "staging")
    await ui.register_node("acme", token, "mover")
    page = await ui.page(ui.users["olga"])
    await page.goto(ui.url + "/ui/t/acme/nodes/mover")
    await page.fill("#rename-node #f-name", "no good")
    await submit(page, "#rename-node button")
    assert "is not valid" in await page.inner_text("#rename-node #err-name")
    await page.fill("#rename-node #f-name", "mover-2")
    await submit(page, "#rename-node button")
    assert page.url.endswith("/nodes/mover-2")
    await page.select_option("#move-node #f-cvlan", "lab")
    await submit(page, "#move-node button")
    assert "its new address" in await page.inner_text("#flash")
    ctx = ui.rc.c.ctx  # type: ignore[union-attr]
    async with ctx.tx() as s:
        t = await resolve_tenant(s, SYSTEM, "acme")
        n, cvlan_name = await nodes.get(s, SYSTEM, t, "mover-2")
    assert cvlan_name == "lab"


async def test_admin_manages_users_and_api_tokens(ui: UiEnv) -> None:
    page = await ui.page(ui.users["alice"])
    await page.goto(ui.url + "/ui/t/acme/users")
    await page.fill("#create-user #f-email", "not-an-email")
    await submit(page, "#create-user button")
    assert "not a valid address" in await page.inner_text("#create-user #err-email")
    await page.fill("#create-user #f-email", "newbie@acme.example")
    await page.select_option("#create-user #f-role", "auditor")
    await submit(page, "#create-user button")
    password = (await page.inner_text("#new-password")).strip()
    assert len(password) >= 10
    assert "auditor" in await page.locator("#user-table tr", has_text="newbie@acme.example").inner_text()
    await ui.shot(page, "users")
    newbie = await ui.page()
    await sign_in(newbie, ui.url, "newbie@acme.example", password)
    assert newbie.url == ui.url + "/ui/t/acme/"

    await page.goto(ui.url + "/ui/t/acme/apitokens")
    await page.fill("#create-apitoken #f-name", "ci")
    await page.select_option("#create-apitoken #f-role", "operator")
    await submit(page, "#create-apitoken button")
    token = (await page.inner_text("#new-apitoken")).strip()
    api = ui.rc.api(token)
    assert (await api.get("/api/v1/whoami")).ok()["roles"] == {"1": "operator"}
    await ui.shot(page, "apitokens")
    prefix = token.split("_")[1]
    await submit(page, page.locator("#apitoken-table tr", has_text=prefix).locator("button"))
    assert "revoked" in await page.locator("#apitoken-table tr", has_text=prefix).inner_text()
    assert (await api.get("/api/v1/whoami")).status == 401

    await page.goto(ui.url + "/ui/t/acme/users")
    await submit(page, page.locator("#user-table tr", has_text="newbie@acme.example").locator("button"))
    assert await page.locator("#user-table tr", has_text="newbie@acme.example").count() == 0
    # Operators see users but cannot manage them or see API tokens.
    olga = await ui.page(ui.users["olga"])
    r = await olga.goto(ui.url + "/ui/t/acme/apitokens")
    assert r is not None and r.status == 403


async def test_tenant_switcher_for_a_user_in_two_tenants(ui: UiEnv) -> None:
    ctx = ui.rc.c.ctx  # type: ignore[union-attr]
    async with ctx.tx() as s:
        for tenant, role in (("acme", "auditor"), ("globex", "admin")):
            t = await resolve_tenant(s, SYSTEM, tenant)
            await users.create_user(ctx, s, SYSTEM, t, "carol@example.com", role, PASSWORD)
    page = await ui.page("carol@example.com")
    await page.click("#tenant-switcher summary")

    assert await page.locator("#tenant-switcher li").count() == 2
    await submit(page, "#tenant-switcher a:has-text('Globex')")
    assert page.url == ui.url + "/ui/t/globex/"
    assert await page.inner_text(".me .badge") == "admin"
    assert await page.locator("text=Add a node").count() == 1
    await page.click("#tenant-switcher summary")

    await submit(page, "#tenant-switcher a:has-text('Acme Corp')")
    assert page.url == ui.url + "/ui/t/acme/"
    assert await page.inner_text(".me .badge") == "auditor"
    assert await page.locator("text=Add a node").count() == 0


async def test_cvlan_edit_and_delete(ui: UiEnv) -> None:
    page = await ui.page(ui.users["olga"])
    await page.goto(ui.url + "/ui/t/acme/cvlans")
    await page.fill("#create-cvlan #f-name", "scratch")
    await page.fill("#create-cvlan #f-subnet", "100.127.8.0/24")
    await submit(page, "#create-cvlan button[type=submit]")
    assert "100.127.8.0/24" in await page.inner_text(".meta")
    await page.fill("#edit-cvlan #f-name", "scratch-2")
    await page.select_option("#edit-cvlan #f-mode", "hub")
    await submit(page, "#edit-cvlan button")
    assert page.url.endswith("/cvlans/scratch-2") and "hub" in await page.inner_text(".meta")
    # A CVLAN with nodes cannot be deleted: the reason is shown, nothing changes.
    node = await ui.register_node("acme", await ui.issue_token("acme", "scratch-2"), "temp")
    await page.reload()
    await submit(page, "#delete-cvlan button")
    assert "still has 1 nodes" in await page.inner_text("#err-form")
    ctx = ui.rc.c.ctx  # type: ignore[union-attr]
    async with ctx.tx() as s:
        await nodes.delete(ctx, s, SYSTEM, await resolve_tenant(s, SYSTEM, "acme"), str(node.id))
    await page.goto(ui.url + "/ui/t/acme/cvlans/scratch-2")
    await submit(page, "#delete-cvlan button")
    assert page.url.endswith("/ui/t/acme/cvlans")
    assert "scratch-2" not in await page.inner_text("#cvlan-table")
    assert "lab" in await page.inner_text("#cvlan-table")


async def test_audit_log_pages(ui: UiEnv) -> None:
    ctx = ui.rc.c.ctx  # type: ignore[union-attr]
    async with ctx.tx() as s:
        for i in range(30):
            await infra.create_region(ctx, s, SYSTEM, f"r{i}")
            await infra.delete_region(ctx, s, SYSTEM, f"r{i}")
    page = await ui.page(ui.users["root"])
    await page.goto(ui.url + "/ui/platform/audit?action=region.delete")
    assert await page.locator("#audit-table tbody tr").count() == 30
    await page.goto(ui.url + "/ui/platform/audit")
    assert await page.locator("#audit-table tbody tr").count() == 50
    first_page = await page.inner_text("#audit-table")
    await submit(page, "a[rel=next]")
    assert "page=2" in page.url
    assert await page.locator("#audit-table tbody tr").count() > 0
    assert await page.inner_text("#audit-table") != first_page
    await submit(page, "a[rel=prev]")
    assert await page.inner_text("#audit-table") == first_page


async def test_dashboard_counts_nodes_online_and_offline(ui: UiEnv) -> None:
    token = await ui.issue_token("acme", "staging", reusable=True, tags=["tag:server"])
    for i, online in enumerate((True, True, True, False)):
        await ui.register_node(
            "acme", token, f"web-{i + 1}", online=online, endpoints=[f"198.51.100.{20 + i}:51820"]
        )
    # Nodes left by earlier tests may be near the online threshold on a slow run: pin every node
    # of the tenant clearly online (web-1..3) or clearly offline, as their polls would.
    ctx = ui.rc.c.ctx  # type: ignore[union-attr]
    async with ctx.tx() as s:
        t = await resolve_tenant(s, SYSTEM, "acme")
        rows, total = await nodes.list_(s, SYSTEM, t, None, 1000, 0)
        for n, _ in rows:
            fresh = n.name in ("web-1", "web-2", "web-3")
            n.last_seen = ctx.now() - (dt.timedelta(seconds=2) if fresh else dt.timedelta(hours=3))
        online = 3
        cvlan_total = (await cvlans.list_(s, SYSTEM, t, 1000, 0))[1]
    page = await ui.page(ui.users["alice"])
    assert await page.inner_text("#count-nodes") == str(total)
    assert await page.inner_text("#count-online") == str(online)
    assert await page.inner_text("#count-offline") == str(total - online)
    assert await page.inner_text("#count-cvlans") == str(cvlan_total)
    assert "web-4 enrolled with token" in await page.inner_text(".feed")
    await ui.shot(page, "dashboard")
    await page.goto(ui.url + "/ui/t/acme/nodes")
    assert await page.locator("#members .dot.on").count() == online
    await ui.shot(page, "nodes")


async def test_policy_editing_and_denied_traffic(ui: UiEnv) -> None:
    token = await ui.issue_token("acme", "lab", reusable=True, tags=["tag:db"])
    db = await enrol(ui.rc, token, "db-1")
    await db.client.poll(0)
    page = await ui.page(ui.users["olga"])
    await page.goto(ui.url + "/ui/t/acme/cvlans/lab")
    await submit(page, "#policy-link")
    assert "no policy" in (await page.inner_text("#policy-effect")).lower()
    await page.fill("#f-document", '{"rules": [{"src": ["tag:web"], "dst": ["tag:db"], "colour": "red"}]}')
    await submit(page, "#policy-form button[type=submit]")
    assert "policy rules.0.colour: unknown field" in (await page.inner_text("#err-document")).lower()
    await page.fill("#f-document", "{not json")
    await submit(page, "#policy-form button[type=submit]")
    assert "not valid JSON" in await page.inner_text("#err-document")
    good = '{"rules": [{"src": ["tag:web"], "dst": ["tag:db"], "proto": "tcp", "ports": ["5432"]}]}'
    await page.fill("#f-document", good)
    await submit(page, "#policy-form button[type=submit]")
    assert "Policy saved" in await page.inner_text("#flash")
    assert "Rules apply" in await page.inner_text("#policy-effect")
    # The node reports what it dropped; the CVLAN's policy page and the tenant's list show it.
    flows = [pb.DeniedFlow(src="100.64.1.9", dst="100.64.1.2", proto="tcp", dport=22, packets=1234)]
    assert (await db.client.report(flows)).accepted == 1
    await db.client.close()
    await page.reload()
    assert "1,234" in await page.inner_text("#denied-table")
    await ui.shot(page, "policy")
    await submit(page, "text=Denied traffic >> nth=0")
    assert "100.64.1.9" in await page.inner_text("#denied-table")
    # The auditor reads the policy but has no editor.
    audrey = await ui.page(ui.users["audrey"])
    await audrey.goto(ui.url + "/ui/t/acme/cvlans/lab/policy")
    assert await audrey.locator("#policy-form").count() == 0
    assert "tag:web" in await audrey.inner_text("#policy-document")
    await page.goto(ui.url + "/ui/t/acme/cvlans/lab/policy")
    await submit(page, "#clear-policy")
    assert "Policy removed" in await page.inner_text("#flash")


async def test_attach_and_detach_a_vrouter(ui: UiEnv) -> None:
    ctx = ui.rc.c.ctx  # type: ignore[union-attr]
    async with ctx.tx() as s:
        await infra.create_region(ctx, s, SYSTEM, "us-east")
        await infra.create_vrouter(ctx, s, SYSTEM, "us-east", "hub-1", "203.0.113.10:51820")
    page = await ui.page(ui.users["olga"])
    await page.goto(ui.url + "/ui/t/acme/cvlans/staging")
    assert "needs a vrouter" in await page.inner_text("#vrouters")
    await submit(page, "#attach-vrouter button")
    assert "choose a vrouter" in (await page.inner_text("#err-vrouter")).lower()
    await page.select_option("#attach-vrouter #f-vrouter", "hub-1")
    await submit(page, "#attach-vrouter button")
    assert "hub-1 now serves" in await page.inner_text("#flash")
    row = page.locator("#vrouter-table tr", has_text="hub-1")
    assert "us-east" in await row.inner_text() and "not started" in await row.inner_text()
    await submit(page, row.locator("button"))
    assert "no longer serves" in await page.inner_text("#flash")
    assert await page.locator("#vrouter-table").count() == 0


async def test_change_own_password_ends_other_sessions(ui: UiEnv) -> None:
    ctx = ui.rc.c.ctx  # type: ignore[union-attr]
    async with ctx.tx() as s:
        t = await resolve_tenant(s, SYSTEM, "globex")
        await users.create_user(ctx, s, SYSTEM, t, "pat@globex.example", "operator", PASSWORD)
    other = await ui.page("pat@globex.example")
    page = await ui.page("pat@globex.example")
    await submit(page, "#account-link")
    assert "operator" in await page.inner_text(".kv")

    async def change(current: str, new: str, confirm: str) -> None:
        await page.fill("#f-current", current)
        await page.fill("#f-password", new)
        await page.fill("#f-confirm", confirm)
        await submit(page, "#change-password button")

    await change("wrong-password", "another-long-one", "another-long-one")
    assert "current password is not correct" in await page.inner_text("#err-current")
    await change(PASSWORD, "another-long-one", "another-long-two")
    assert "differ" in await page.inner_text("#err-confirm")
    await change(PASSWORD, "short", "short")
    assert "at least 10 characters" in await page.inner_text("#err-password")
    await change(PASSWORD, "another-long-one", "another-long-one")
    assert "Password changed" in await page.inner_text("#flash")
    await page.goto(ui.url + "/ui/t/globex/")
    assert page.url == ui.url + "/ui/t/globex/"  # this session carries on
    await other.goto(ui.url + "/ui/t/globex/")
    assert "/ui/signin" in other.url  # the other one has ended
    await sign_in(other, ui.url, "pat@globex.example", "another-long-one")
    assert other.url == ui.url + "/ui/t/globex/"


def _peer(node_id: int, path: int, sent: int, answered: int, rtt_us: int, region: str = "") -> pb.PeerHealth:
    return pb.PeerHealth(
        node_id=node_id,
        path=path,
        relay_region=region,
        handshake_age_s=12,
        rtt_us=rtt_us,
        probes_sent=sent,
        probes_answered=answered,
        rx_bytes=1000,
        tx_bytes=2000,
    )


async def test_cvlan_health_view_shows_relayed_and_lossy_pairs_first(ui: UiEnv) -> None:
    ctx = ui.rc.c.ctx  # type: ignore[union-attr]
    async with ctx.tx() as s:
        t = await resolve_tenant(s, SYSTEM, "acme")
        await cvlans.create(ctx, s, SYSTEM, t, "health", None, "mesh")
    token = await ui.issue_token("acme", "health", reusable=True)
    a, b, c = [await enrol(ui.rc, token, name) for name in ("h-a", "h-b", "h-c")]
    ia, ib, ic = a.node_id, b.node_id, c.node_id
    direct, relay = pb.PEER_HEALTH_PATH_DIRECT, pb.PEER_HEALTH_PATH_RELAY
    reports = [
        (a, [_peer(ib, relay, 20, 20, 3100, "eu"), _peer(ic, direct, 20, 13, 600)]),
        (b, [_peer(ia, relay, 20, 20, 3000, "eu"), _peer(ic, direct, 20, 20, 400)]),
        (c, [_peer(ia, direct, 20, 13, 650), _peer(ib, direct, 20, 20, 420)]),
    ]
    await a.client.report([], pb.HealthSummary(peers_total=1, peers=[_peer(ib, direct, 20, 20, 500)]))
    await ui.rc.c.app[NODEAPI_KEY].liveness.flush()  # type: ignore[union-attr]
    for n, peers in reports:  # a's report now says a -> b fell back to a relay: an event
        await n.client.poll(0)
        await n.client.report([], pb.HealthSummary(peers_total=2, peers=peers))
        await n.client.close()
    await ui.rc.c.app[NODEAPI_KEY].liveness.flush()  # type: ignore[union-attr]
    page = await ui.page(ui.users["audrey"])
    await page.goto(ui.url + "/ui/t/acme/cvlans/health")
    await submit(page, "#health-link")
    assert await page.inner_text("#count-lossy") == "2"
    assert await page.inner_text("#count-relay") == "2"
    assert await page.inner_text("#count-ok") == "2"
    rows = page.locator("#unhealthy-table tbody tr")
    assert await rows.count() == 4
    first = await rows.nth(0).inner_text()
    assert "lossy" in first and "35 %" in first and "direct" in first
    relayed = await rows.nth(2).inner_text()
    assert "relay" in relayed and "eu" in relayed and "3.1 ms" in relayed
    assert await page.locator("#matrix-table td.health-relay").count() == 2
    # The history: one sample (the first report's), drawn until now, its pairs stacked by state.
    assert await page.locator("#history-chart rect").count() >= 1
    events = page.locator("#events-table tbody tr")
    assert await events.count() == 1
    assert [await events.nth(0).locator("td").nth(i).inner_text() for i in (1, 2, 3, 4)] == [
        "relay fallback",
        "h-a",
        "h-b",
        "relay eu",
    ]
    assert ui.errors(page) == []
    await ui.shot(page, "cvlan-health")


async def test_node_page_shows_routes_and_exit_offer_and_admins_approve_them(ui: UiEnv) -> None:
    ctx = ui.rc.c.ctx  # type: ignore[union-attr]
    token = await ui.issue_token("acme", "lab", reusable=True)
    gw1, gw2 = [await ui.register_node("acme", token, name) for name in ("gw1", "gw2")]
    async with ctx.tx() as s:
        await subnets.store_advert(ctx, s, gw1.id, ("10.7.0.0/24", "0.0.0.0/0"))
        await subnets.store_advert(ctx, s, gw2.id, ("10.7.0.0/16",))

    def row(page: Any, route: str) -> Any:
        return page.locator(f"#route-table tr[data-route='{route}']")

    page = await ui.page(ui.users["audrey"])  # an auditor sees them, and no buttons
    await page.goto(ui.url + "/ui/t/acme/nodes/gw1")
    assert re.sub(r"\s+", " ", await row(page, "10.7.0.0/24").inner_text()).startswith("10.7.0.0/24 pending")
    assert "exit node" in await row(page, "0.0.0.0/0").inner_text()
    assert await page.locator("#route-table button").count() == 0

    page = await ui.page(ui.users["alice"])
    await page.goto(ui.url + "/ui/t/acme/nodes/gw1")
    await submit(page, row(page, "10.7.0.0/24").locator("button"))
    assert "Route 10.7.0.0/24 approved" in await page.inner_text("#flash")
    assert "approved" in await row(page, "10.7.0.0/24").locator(".route-state").inner_text()
    assert "yes (primary)" in await row(page, "10.7.0.0/24").inner_text()
    await submit(page, row(page, "0.0.0.0/0").locator("button"))
    assert "The exit node offer approved" in await page.inner_text("#flash")
    await ui.shot(page, "node-routes")

    await page.goto(ui.url + "/ui/t/acme/nodes/gw2")  # an overlap is refused on the page, nothing changes
    await submit(page, row(page, "10.7.0.0/16").locator("button"))
    assert (
        await page.inner_text("#err-route") == "Route 10.7.0.0/16 overlaps 10.7.0.0/24, approved for node gw1"
    )
    assert await row(page, "10.7.0.0/16").locator(".route-state").inner_text() == "pending"

    await page.goto(ui.url + "/ui/t/acme/nodes/gw1")
    await submit(page, row(page, "0.0.0.0/0").locator("button"))
    assert "revoked" in await page.inner_text("#flash")
    async with ctx.tx() as s:
        t = await resolve_tenant(s, SYSTEM, "acme")
        got = await subnets.list_routes(ctx, s, SYSTEM, t, None, "gw1")
    assert sorted((r["route"], r["state"]) for r in got) == [
        ("0.0.0.0/0", "pending"),
        ("10.7.0.0/24", "approved"),
    ]
    # no script errors, no CSP violations (the browser logs the refused approval's 409 itself)
    assert [e for e in ui.errors(page) if "status of 409" not in e] == []


async def test_cvlan_page_manages_route_auto_approval_rules(ui: UiEnv) -> None:
    ctx = ui.rc.c.ctx  # type: ignore[union-attr]
    gw = await ui.register_node("acme", await ui.issue_token("acme", "lab"), "gw3")
    async with ctx.tx() as s:
        await subnets.store_advert(ctx, s, gw.id, ("10.9.0.0/24", "0.0.0.0/0"))
    page = await ui.page(ui.users["olga"])  # an operator sees the rules, cannot change them
    await page.goto(ui.url + "/ui/t/acme/cvlans/lab")
    assert (
        await page.locator("#route-rules").count() == 1
        and await page.locator("#route-rule-form").count() == 0
    )

    page = await ui.page(ui.users["alice"])
    await page.goto(ui.url + "/ui/t/acme/cvlans/lab")
    await submit(page, "#route-rule-form button")  # kind route, no prefix
    assert await page.inner_text("#err-prefix") == "A route rule needs a prefix, e.g. 10.0.0.0/8"
    await page.select_option("#route-rule-form #f-kind", "exit")
    await submit(page, "#route-rule-form button")
    assert "Rule added; it approved" in await page.inner_text("#flash")
    row = page.locator("#route-rule-table tr", has_text="exit node")
    assert "every node" in await row.inner_text()
    await page.goto(ui.url + "/ui/t/acme/nodes/gw3")
    assert (
        await page.locator("#route-table tr[data-route='0.0.0.0/0'] .route-state").inner_text() == "approved"
    )
    await page.goto(ui.url + "/ui/t/acme/cvlans/lab")
    await submit(page, page.locator("#route-rule-table tr", has_text="exit node").locator("button"))
    assert "Rule deleted" in await page.inner_text("#flash")
    assert await page.locator("#route-rule-table").count() == 0
    assert [e for e in ui.errors(page) if "status of 422" not in e] == []
