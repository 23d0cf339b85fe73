"""The lifecycle forms over HTTP, as a tenant admin: a node's disable/enable, tags and key expiry, and
the tenant's key expiry policy."""

from __future__ import annotations

import pytest

from tests.harness.controller import RunningController
from tests.harness.nodes import enrol, make_token
from tests.integration.test_web_session import PW, _client, _sign_in, admin_with_node, form_page

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


async def test_node_page_disables_enables_tags_and_turns_key_expiry_off(
    controller: RunningController,
) -> None:
    node, t = await admin_with_node(controller, "box")
    base = f"{controller.url}/ui/t/acme/nodes/{node['id']}"
    async with _client(controller) as http:
        assert (await _sign_in(http, controller.url, PW))[0] == 303

        async def page() -> tuple[str, str]:
            return await form_page(http, base)

        body, csrf = await page()
        assert 'id="disable-node"' in body and 'id="node-disabled"' not in body
        async with http.post(base + "/disable", data={"_csrf": csrf}, allow_redirects=False) as r:
            assert r.status == 303
        body, csrf = await page()
        assert 'id="node-disabled"' in body and 'id="enable-node"' in body
        async with http.post(base + "/enable", data={"_csrf": csrf}, allow_redirects=False) as r:
            assert r.status == 303
        body, csrf = await page()
        assert 'id="node-disabled"' not in body
        async with http.post(base + "/tags", data={"_csrf": csrf, "tags": "tag:web bad!tag"}) as r:
            assert r.status == 422 and 'id="err-tags"' in await r.text()
        async with http.post(
            base + "/tags", data={"_csrf": csrf, "tags": "tag:web"}, allow_redirects=False
        ) as r:
            assert r.status == 303
        async with http.post(
            base + "/key-expiry", data={"_csrf": csrf, "disabled": "yes"}, allow_redirects=False
        ) as r:
            assert r.status == 303
        body, _ = await page()
        assert '<span class="tag">tag:web</span>' in body and "certificates last ten years" in body
        # The tenant's key expiry policy, on the overview page.
        home = f"{controller.url}/ui/t/acme/"
        async with http.post(home + "key-expiry", data={"_csrf": csrf, "lifetime": "10m"}) as r:
            assert r.status == 422 and 'id="err-lifetime"' in await r.text()
        async with http.post(
            home + "key-expiry", data={"_csrf": csrf, "lifetime": "30d"}, allow_redirects=False
        ) as r:
            assert r.status == 303
        async with http.get(home) as r:
            assert 'name="lifetime" type="text" value="30d"' in await r.text()
    assert (await controller.api().get("/api/v1/tenants/acme")).ok()["node_cert_lifetime_s"] == 30 * 86400
    got = (await controller.api().get(f"/api/v1/tenants/acme/nodes/{node['id']}")).ok()
    assert (got["disabled"], got["tags"], got["key_expiry_disabled"]) == (False, ["tag:web"], True)


async def test_nodes_show_how_long_their_certificate_has_left(controller: RunningController) -> None:
    await admin_with_node(controller, "box")  # never registered: no certificate yet
    n = await enrol(controller, await make_token(controller), "laptop")
    path = f"/api/v1/tenants/acme/nodes/{n.node_id}/key-expiry"
    (await controller.api().request("PUT", path, json={"disabled": True})).ok()
    async with _client(controller) as http:
        assert (await _sign_in(http, controller.url, PW))[0] == 303
        body, _ = await form_page(http, f"{controller.url}/ui/t/acme/nodes/laptop")
        assert '<span class="muted">(in 6d)</span>' in body
        async with http.get(f"{controller.url}/ui/t/acme/nodes") as r:
            members = await r.text()
        assert '<td class="muted">in 6d (expiry off)</td>' in members
        assert '<td class="muted">not issued</td>' in members
    await n.client.close()
