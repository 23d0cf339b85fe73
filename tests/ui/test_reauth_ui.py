"""A tenant admin approves (on the node's page) or rejects (on the Nodes page), in the web UI, the
re-authentication of nodes that asked without a token (docs/NODES.md); an operator sees the requests
but not the buttons."""

from __future__ import annotations

import pytest

from cvlan.client import tls
from cvlan.client.controller import ControlError, NodeApiClient
from cvlan.devtools.harness.enrol import EnrolledNode, register
from cvlan.wire.pb import node_pb2 as pb
from tests.ui.conftest import UiEnv, submit

pytestmark = [pytest.mark.ui, pytest.mark.asyncio(loop_scope="module")]


async def _ask(ui: UiEnv, n: EnrolledNode) -> pb.RegisterResponse:
    """The node asks to re-authenticate without a token, proving it holds its keys."""
    anon = NodeApiClient(ui.url, ui.rc.c.ca.cert_pem.decode())  # type: ignore[union-attr]
    try:
        return await anon.reauthenticate(
            "", n.wg_private, tls.new_key_and_csr()[1], n.reg.certificate_pem, n.key_pem
        )
    finally:
        await anon.close()


async def test_admin_approves_one_request_and_rejects_another_in_the_ui(ui: UiEnv) -> None:
    ca = ui.rc.c.ca.cert_pem.decode()  # type: ignore[union-attr]
    laptop = await register(ui.url, ca, await ui.issue_token("acme", "lab"), "drawer-laptop")
    kiosk = await register(ui.url, ca, await ui.issue_token("acme", "lab"), "lobby-kiosk")
    for n in (laptop, kiosk):
        with pytest.raises(ControlError) as e:
            await _ask(ui, n)
        assert e.value.reason == "reauth_pending"

    operator = await ui.page(ui.users["olga"])
    await operator.goto(ui.url + "/ui/t/acme/nodes")
    assert "drawer-laptop" in await operator.inner_text("#reauth-requests")
    assert await operator.locator("#reauth-requests button").count() == 0

    page = await ui.page(ui.users["alice"])
    await page.goto(ui.url + "/ui/t/acme/nodes")
    rows = page.locator("#reauth-requests tbody tr")
    assert sorted(await rows.all_inner_texts())[0].startswith("drawer-laptop")
    assert await rows.count() == 2
    await ui.shot(page, "reauth-requests")
    # The node's own page shows its request too; approved from there.
    await submit(page, page.locator("#reauth-drawer-laptop a"))
    assert "asks to come back without a new token" in await page.inner_text("#reauth-request")
    await submit(page, page.locator("#reauth-request button", has_text="Approve"))
    assert "approved" in await page.inner_text("#flash")
    await submit(page, page.locator("#reauth-lobby-kiosk button", has_text="Reject"))
    assert "rejected" in await page.inner_text("#flash")
    assert await page.locator("#reauth-requests").count() == 0  # nothing pending any more

    back = await _ask(ui, laptop)
    assert (back.node_id, back.address, back.node_name) == (
        laptop.reg.node_id,
        laptop.reg.address,
        "drawer-laptop",
    )
    with pytest.raises(ControlError) as e:
        await _ask(ui, kiosk)
    assert e.value.reason == "reauth_refused" and "rejected" in e.value.message

    await page.goto(ui.url + "/ui/t/acme/audit")
    text = await page.inner_text("main")
    for action in ("node.reauth_requested", "node.reauth_approve", "node.reauth_reject", "node.reauth"):
        assert action in text
    for n in (laptop, kiosk):
        await n.client.close()
