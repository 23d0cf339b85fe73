"""Web UI sign-in through an OpenID Connect provider: the authorization code flow with PKCE.

/ui/oidc/NAME/start stores a pending sign-in (state, nonce, PKCE verifier and a browser secret) and
sends the browser to the provider; /ui/oidc/callback takes the pending sign-in (once: a replay finds
nothing), checks that the same browser comes back (the browser secret's cookie, against login
CSRF), exchanges the code, verifies the ID token and signs the person in. The session cookie is
SameSite=Strict, which a browser does not send on the cross-site redirect chain that brought it back
from the provider: the callback therefore answers with a page that moves on by itself, a fresh
same-site navigation that carries it."""

from __future__ import annotations

import secrets

from aiohttp import web

from cvlan.controller.errors import DomainError
from cvlan.controller.http.framework import CTX_KEY
from cvlan.controller.oidc import signin
from cvlan.controller.oidc.client import PROVIDERS_KEY
from cvlan.controller.web import session as sessions
from cvlan.controller.web.account import safe_next, signin_page
from cvlan.controller.web.core import ENV_KEY, KEY_KEY, PREFIX, html_response, secure, set_session_cookie

BROWSER_COOKIE = "cvlan_oidc"
CALLBACK = PREFIX + "/oidc/callback"


def routes(p: str) -> list[web.RouteDef]:
    return [web.get(p + "/oidc/{provider}/start", start), web.get(p + "/oidc/callback", callback)]


def redirect_uri(request: web.Request) -> str:
    return request.app[CTX_KEY].settings.url + CALLBACK


def _refused(request: web.Request, e: DomainError) -> web.Response:
    return signin_page(request, error=e.message[:1].upper() + e.message[1:], status=e.status)


async def start(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX_KEY]
    name = request.match_info["provider"]
    browser = secrets.token_urlsafe(24)
    nonce, verifier = secrets.token_urlsafe(24), secrets.token_urlsafe(48)
    try:
        client = request.app[PROVIDERS_KEY].get_or_fail(name)
        data = {
            "nonce": nonce,
            "verifier": verifier,
            "browser": browser,
            "next": safe_next(request.query.get("next", "")),
        }
        state = signin.new_state()
        url = await client.authorization_url(redirect_uri(request), state, nonce, verifier)
        await signin.remember(ctx, state, client.name, data)
    except DomainError as e:
        await signin.record_failure(ctx, "oidc", name, "", e.message)
        return _refused(request, e)
    resp = web.Response(status=303, headers={"Location": url, "Cache-Control": "no-store"})
    # Lax, not Strict: it must come back with the provider's (cross-site) redirect to the callback.
    resp.set_cookie(
        BROWSER_COOKIE, browser, httponly=True, samesite="Lax", secure=secure(request), path=CALLBACK
    )
    return resp


async def callback(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX_KEY]
    q = request.query
    provider = ""
    try:
        pending = await signin.take(ctx, q.get("state", ""))
        provider = pending.provider
        client = request.app[PROVIDERS_KEY].get_or_fail(provider)
        if q.get("error"):
            raise client.refused(
                f"the provider answered {q['error']}: {q.get('error_description', '')[:200]}"
            )
        if not secrets.compare_digest(request.cookies.get(BROWSER_COOKIE, ""), str(pending.data["browser"])):
            raise client.refused("this sign-in was started in another browser; start again here")
        token = await client.exchange_code(
            redirect_uri(request), q.get("code", ""), str(pending.data["verifier"])
        )
        claims = await client.verify_id_token(token, str(pending.data["nonce"]))
        user = await signin.complete(ctx, client, claims, "oidc")
    except DomainError as e:
        await signin.record_failure(ctx, "oidc", provider, "", e.message)
        return _refused(request, e)
    nxt = str(pending.data["next"])
    body = request.app[ENV_KEY].get_template("signed_in.html").render(next=nxt, email=user.email)
    resp = html_response(body)
    set_session_cookie(resp, request, sessions.new_session(request.app[KEY_KEY], user, ctx.now()))
    resp.del_cookie(BROWSER_COOKIE, path=CALLBACK)
    return resp
