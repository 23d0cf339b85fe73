"""Sign-in, sign-out, the landing redirect and the signed-in user's own account page."""

from __future__ import annotations

import urllib.parse

from aiohttp import web

from cvlan.controller.auth import Principal
from cvlan.controller.errors import DomainError, Kind
from cvlan.controller.http.framework import CTX_KEY
from cvlan.controller.oidc.client import PROVIDERS_KEY
from cvlan.controller.ops import tenants
from cvlan.controller.web import session as sessions
from cvlan.controller.web import signin
from cvlan.controller.web.core import (
    CSRF_FIELD,
    ENV_KEY,
    KEY_KEY,
    LOGIN_CSRF_COOKIE,
    PREFIX,
    PRINCIPAL_NAME,
    SESSION_RKEY,
    Form,
    Page,
    html_response,
    login_csrf,
    page,
    same,
    see_other,
    set_cookie,
    set_session_cookie,
)


def safe_next(value: str) -> str:
    """Only a path inside the UI: never another site (open redirect)."""
    if value.startswith(PREFIX + "/") and not value.startswith("//") and "\\" not in value:
        return value
    return PREFIX + "/"


def signin_page(request: web.Request, email: str = "", error: str = "", status: int = 200) -> web.Response:
    """The sign-in form (password, and a button per identity provider), with an error if given."""
    token = login_csrf(request)
    nxt = safe_next(request.query.get("next", ""))
    providers = [
        (p.cfg.label, f"{PREFIX}/oidc/{p.name}/start?next={urllib.parse.quote(nxt)}")
        for p in request.app[PROVIDERS_KEY].values()
    ]
    body = (
        request.app[ENV_KEY]
        .get_template("signin.html")
        .render(
            csrf=token,
            email=email,
            error=error,
            next=nxt,
            providers=providers,
        )
    )
    resp = html_response(body, status)
    set_cookie(resp, request, LOGIN_CSRF_COOKIE, token, path=PREFIX + "/signin")
    return resp


async def signin_form(request: web.Request) -> web.StreamResponse:
    if isinstance(request.get(PRINCIPAL_NAME), Principal):
        return see_other(safe_next(request.query.get("next", "")))
    return signin_page(request)


async def signin_submit(request: web.Request) -> web.StreamResponse:
    data = await request.post()
    email = str(data.get("email", "")).strip()
    password = str(data.get("password", ""))
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    sent = str(data.get(CSRF_FIELD, ""))
    if not cookie or not same(cookie, sent):
        return signin_page(request, email, "This form has expired. Please try again.", 403)
    if not email or not password:
        return signin_page(request, email, "Enter your email and password.", 422)
    ctx = request.app[CTX_KEY]
    out = await signin.check(ctx, email, password)
    if out.user is None:
        return signin_page(request, email, out.error, 401)
    sess = sessions.new_session(request.app[KEY_KEY], out.user, ctx.now())
    resp = see_other(safe_next(str(data.get("next", ""))))
    set_session_cookie(resp, request, sess)
    resp.del_cookie(LOGIN_CSRF_COOKIE, path=PREFIX + "/signin")
    return resp


@page()
async def signout(p: Page) -> web.StreamResponse:
    async with p.ctx.tx() as s:
        await sessions.revoke(s, p.sess, p.ctx.now())
    resp = see_other(PREFIX + "/signin")
    resp.del_cookie(sessions.COOKIE, path="/")
    p.request.pop(SESSION_RKEY, None)
    return resp


@page()
async def home(p: Page) -> web.StreamResponse:
    if p.who.platform_admin:
        return see_other(PREFIX + "/platform/")
    async with p.ctx.tx() as s:
        rows, _ = await tenants.list_(s, p.who, 1, 0)
    if not rows:
        return p.render("error.html", title="No tenant yet", message="You have no role in any tenant yet.")
    return see_other(f"{PREFIX}/t/{urllib.parse.quote(rows[0].name)}/")


async def root(request: web.Request) -> web.StreamResponse:
    return see_other(PREFIX + "/")


async def _account_page(p: Page, form: Form | None = None, status: int = 200) -> web.Response:
    names = {t.id: t for t in p.visible_tenants}
    roles = [(names[tid], r.value) for tid, r in p.who.roles.items() if tid in names]
    return p.render("account.html", status=status, roles=roles, form=form or Form(), nav="account")


@page()
async def account(p: Page) -> web.StreamResponse:
    return await _account_page(p)


@page()
async def account_password(p: Page) -> web.StreamResponse:
    f = await p.form()
    if f.get("password") != f.get("confirm"):
        f.errors["confirm"] = "The two new passwords differ."
        return await _account_page(p, f, 422)
    try:
        user = await signin.change_password(p.ctx, p.user.id, f.get("current"), f.get("password"))
    except DomainError as e:
        if e.kind == Kind.NOT_FOUND:
            raise
        f.fail(e, ("current", "password"))
        return await _account_page(p, Form(errors=f.errors), 422)
    resp = p.redirect(PREFIX + "/account", "Password changed. Your other sessions have ended.")
    set_session_cookie(resp, p.request, sessions.new_session(p.key, user, p.ctx.now()))
    p.request.pop(SESSION_RKEY, None)
    return resp
