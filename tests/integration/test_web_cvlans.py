"""The UI's CVLAN forms over HTTP, as a tenant admin: create, edit and attach a vrouter; a refused
change shows the page again (422) with the field marked and changes nothing, a gone CVLAN is the
404 page. About 5 s."""

from __future__ import annotations

import pytest

from cvlan.controller.auth import SYSTEM
from cvlan.controller.ops import cvlans, infra, vrouters
from tests.harness.controller import RunningController
from tests.integration.test_web_session import PW, _client, _sign_in, admin_with_node, form_page

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


async def test_cvlan_forms_refuse_in_place_and_change_on_success(controller: RunningController) -> None:
    ctx = controller.c.ctx  # type: ignore[union-attr]
    _, t = await admin_with_node(controller, "web-1")
    async with ctx.tx() as s:
        await infra.create_region(ctx, s, SYSTEM, "eu")
        await infra.create_vrouter(ctx, s, SYSTEM, "eu", "vr1", "192.0.2.1:51900")
    ui = f"{controller.url}/ui/t/acme"
    async with _client(controller) as http:
        assert (await _sign_in(http, controller.url, PW))[0] == 303
        _, csrf = await form_page(http, ui + "/cvlans")
        bad = {"_csrf": csrf, "name": "lab", "subnet": "10.0.0.0/33", "mode": "mesh"}
        async with http.post(ui + "/cvlans", data=bad) as r:
            assert r.status == 422 and 'id="err-subnet"' in await r.text()
        async with http.post(
            ui + "/cvlans", data={**bad, "subnet": "10.9.0.0/24"}, allow_redirects=False
        ) as r:
            assert r.status == 303 and r.headers["Location"].endswith("/cvlans/lab")
        async with http.post(
            ui + "/cvlans/lab/edit", data={"_csrf": csrf, "name": "lab", "mode": "ring"}
        ) as r:
            assert r.status == 422 and 'id="err-mode"' in await r.text()
        edit = {"_csrf": csrf, "name": "lab2", "mode": "hub"}
        async with http.post(ui + "/cvlans/lab/edit", data=edit, allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"].endswith("/cvlans/lab2")
        for choice in ("", "nope"):
            async with http.post(ui + "/cvlans/lab2/vrouters", data={"_csrf": csrf, "vrouter": choice}) as r:
                assert r.status == 422 and 'id="err-vrouter"' in await r.text(), choice
        async with http.post(ui + "/cvlans/gone/vrouters", data={"_csrf": csrf, "vrouter": "vr1"}) as r:
            assert r.status == 404
        attach = {"_csrf": csrf, "vrouter": "vr1"}
        async with http.post(ui + "/cvlans/lab2/vrouters", data=attach, allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"].endswith("/cvlans/lab2")
    async with ctx.tx() as s:
        rows, _ = await cvlans.list_(s, SYSTEM, t, 100, 0)
        served = await vrouters.list_for_cvlan(s, SYSTEM, t, "lab2")
    shown = {c.name: (c.subnet, c.mode) for c, _ in rows}
    assert shown.keys() == {"office", "lab2"} and shown["lab2"] == ("10.9.0.0/24", "hub")
    assert [a["vrouter"] for a in served] == ["vr1"]
