"""Sign-in through an identity provider in a real browser: Chromium goes from CVLAN's sign-in page
to the provider (oidc-provider on loopback), signs in there, and lands in the tenant its group maps
to with the mapped role; then signs out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from tests.harness.oidc import SsoStack, missing, start_sso, stop_sso
from tests.ui.conftest import CHROMIUM, CHROMIUM_ARGS, playwright_api, submit

pytestmark = [
    pytest.mark.ui,
    pytest.mark.skipif(missing() is not None, reason=str(missing())),
    pytest.mark.asyncio(loop_scope="module"),
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sso_browser(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[SsoStack, Any]]:
    stack = await start_sso(tmp_path_factory.mktemp("sso-ui"))
    pw = await playwright_api.async_playwright().start()
    browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    try:
        api = stack.rc.api()
        (await api.post("/api/v1/tenants", {"name": "acme", "display_name": "Acme Corp"})).ok()
        body = {"provider": "test", "group": "net-ops", "role": "operator"}
        (await api.post("/api/v1/tenants/acme/oidc-mappings", body)).ok()
        yield stack, browser
    finally:
        await browser.close()
        await pw.stop()
        await stop_sso(stack)


async def test_sign_in_with_the_provider_lands_in_the_mapped_tenant(
    sso_browser: tuple[SsoStack, Any],
) -> None:
    stack, browser = sso_browser
    stack.idp.set_account("ivy", "ivy@acme.example", ["net-ops"])
    context = await browser.new_context(ignore_https_errors=True, locale="en-US")
    context.set_default_timeout(15_000)
    page = await context.new_page()
    await page.goto(stack.rc.url + "/ui/")
    assert "/ui/signin" in page.url
    await submit(page, "text=Sign in with Test IdP")
    assert page.url.startswith(stack.idp.issuer + "/interaction/")
    await page.fill("input[name=login]", "ivy")
    await page.fill("input[name=password]", "any password")
    await submit(page, "button[type=submit]")
    if page.url.startswith(stack.idp.issuer + "/interaction/"):  # the consent page
        await submit(page, "button[type=submit]")
    await page.wait_for_url(stack.rc.url + "/ui/t/acme/")
    await page.goto(stack.rc.url + "/ui/account")
    roles = await page.inner_text("main")
    assert "Acme Corp" in roles and "operator" in roles
    await submit(page, "#signout")
    assert "/ui/signin" in page.url
    await page.goto(stack.rc.url + "/ui/t/acme/")
    assert "/ui/signin" in page.url
    await context.close()
