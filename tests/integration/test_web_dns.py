"""The UI's DNS page of a CVLAN over HTTP, as a tenant admin: records and forwarders added (a bad one
shown beside its field, nothing changed) and deleted; the node page shows the node's DNS name. About 5 s."""

from __future__ import annotations

import re

import pytest

from cvlan.controller.auth import SYSTEM
from cvlan.controller.ops import cvlans, dns, tenants, users
from tests.harness.controller import RunningController
from tests.harness.seed import enrol_node
from tests.integration.test_web_session import PW, _client, _sign_in

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


async def test_dns_page_adds_and_deletes_records_and_forwarders(controller: RunningController) -> None:
    ctx = controller.c.ctx  # type: ignore[union-attr]
    async with ctx.tx() as s:
        t = await tenants.create(ctx, s, SYSTEM, "acme")
        await users.create_user(ctx, s, SYSTEM, t, "ann@acme.example", "admin", PW)
        c = await cvlans.create(ctx, s, SYSTEM, t, "office", None, "mesh")
        _, _, text = await cvlans.create_token(
            ctx, s, SYSTEM, t, c.name, reusable=False, max_uses=None, expires_in=None, tags=[]
        )
    node = await enrol_node(controller, text, "Web_1")
    base = f"{controller.url}/ui/t/acme/cvlans/office/dns"
    async with _client(controller) as http:
        assert (await _sign_in(http, controller.url, PW))[0] == 303

        async def page() -> tuple[str, str]:
            async with http.get(base) as r:
                body = await r.text()
            m = re.search(r'name="_csrf" value="([^"]+)"', body)
            assert r.status == 200 and m is not None
            return body, m.group(1)

        body, csrf = await page()
        assert "office.acme.cvlan.internal" in body and 'id="dns-records"' not in body
        bad = {"_csrf": csrf, "name": "git", "type": "A", "value": "10.1.0.300", "ttl": "0"}
        async with http.post(base + "/records", data=bad) as r:
            assert r.status == 422 and 'id="err-value"' in await r.text()
        good = {**bad, "value": "10.1.0.7"}
        async with http.post(base + "/records", data=good, allow_redirects=False) as r:
            assert r.status == 303
        async with http.post(
            base + "/forwarders", data={"_csrf": csrf, "domain": "corp.example", "servers": "nope"}
        ) as r:
            assert r.status == 422 and 'id="err-servers"' in await r.text()
        fwd = {"_csrf": csrf, "domain": "corp.example", "servers": "10.1.0.53, 10.1.0.54"}
        async with http.post(base + "/forwarders", data=fwd, allow_redirects=False) as r:
            assert r.status == 303
        body, csrf = await page()
        assert 'id="dns-records"' in body and "10.1.0.7" in body and "10.1.0.53, 10.1.0.54" in body
        async with ctx.tx() as s:
            shown = await dns.show(ctx, s, SYSTEM, t, "office")
        assert [r["value"] for r in shown["records"]] == ["10.1.0.7"]
        rid = shown["records"][0]["id"]
        async with http.post(
            f"{base}/records/{rid}/delete", data={"_csrf": csrf}, allow_redirects=False
        ) as r:
            assert r.status == 303
        async with http.post(
            f"{base}/forwarders/corp.example/delete", data={"_csrf": csrf}, allow_redirects=False
        ) as r:
            assert r.status == 303
        body, _ = await page()
        assert 'id="dns-records"' not in body and 'id="dns-forwarders"' not in body
        async with http.get(f"{controller.url}/ui/t/acme/nodes/{node['id']}") as r:
            assert 'id="dns-name">web-1.office.acme.cvlan.internal<' in await r.text()
