"""The web UI's plumbing: templates, the session middleware, CSRF, the page decorator, forms.

Pages call the same domain operations as the JSON API (cvlan.controller.ops); authorization is the
operations' own check of the principal, so a page can hide a button but never grant a right."""

from __future__ import annotations

import base64
import datetime as dt
import hmac
import secrets
import urllib.parse
import warnings
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jinja2
from aiohttp import web

from cvlan.controller.auth import Level, Principal
from cvlan.controller.db.models import Tenant, User
from cvlan.controller.errors import DomainError, Kind
from cvlan.controller.http.framework import CTX_KEY
from cvlan.controller.ops import tenants, users
from cvlan.controller.ops.context import OpsContext, Tx, resolve_tenant
from cvlan.controller.web import describe
from cvlan.controller.web import session as sessions
from cvlan.controller.web.health import HealthMonitor

PREFIX = "/ui"
KEY_KEY = web.AppKey("ui_session_key", bytes)
ENV_KEY = web.AppKey("ui_jinja", jinja2.Environment)
HEALTH_KEY = web.AppKey("ui_health", HealthMonitor)
ENGINE_POOL_KEY = web.AppKey("ui_engine_pool", object)
FLASH_COOKIE = "cvlan_flash"
LOGIN_CSRF_COOKIE = "cvlan_login_csrf"
CSRF_FIELD = "_csrf"
CSRF_HEADER = "X-CSRF-Token"
SESSION_RKEY = web.RequestKey("ui_session", sessions.Session)
USER_RKEY = web.RequestKey("ui_user", User)
PRINCIPAL_NAME = "ui_principal"
"""The plain key app.authenticate() reads the session's principal from (for API calls by the UI)."""

Handler = Callable[["Page"], Awaitable[web.StreamResponse]]


def make_env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("cvlan.controller.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["ago"] = ago
    env.filters["when"] = when
    env.filters["until"] = until
    env.filters["show"] = describe.show
    env.globals["describe"] = describe.describe
    env.filters["wgkey"] = lambda h: base64.b64encode(bytes.fromhex(h)).decode() if h else "—"
    env.filters["pairs"] = lambda xs: [(str(x), str(x)) for x in xs]
    return env


def ago(t: dt.datetime | None, now: dt.datetime | None = None) -> str:
    """'12s ago', '5m ago', '3h ago', '2d ago'; 'never' for None."""
    if t is None:
        return "never"
    secs = int(((now or dt.datetime.now(dt.UTC)) - t).total_seconds())
    if secs < 5:
        return "just now"
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= n:
            return f"{secs // n}{unit} ago"
    return f"{secs}s ago"


def until(t: dt.datetime | None, now: dt.datetime | None = None) -> str:
    """'in 6d', 'in 3h', 'expired'; '—' for None."""
    if t is None:
        return "—"
    secs = int((t - (now or dt.datetime.now(dt.UTC))).total_seconds())
    if secs <= 0:
        return "expired"
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= n:
            return f"in {secs // n}{unit}"
    return f"in {secs}s"


def when(t: dt.datetime | None) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S UTC") if t is not None else "—"


SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def same(a: str, b: str) -> bool:
    """Constant-time comparison of two strings from the outside (any characters)."""
    return hmac.compare_digest(a.encode(), b.encode())


def html_response(body: str, status: int = 200) -> web.Response:
    """An HTML page that may not be framed, cached, or run scripts from anywhere but this site."""
    return web.Response(text=body, status=status, content_type="text/html", headers=SECURITY_HEADERS)


def secure(request: web.Request) -> bool:
    """Whether the browser reached us over TLS: directly, or through a trusted TLS-terminating proxy."""
    ctx = request.app[CTX_KEY]
    if request.secure or ctx.settings.tls:
        return True
    return request.headers.get("X-Forwarded-Proto", "").lower() == "https" and ctx.proxies.believes(
        request.remote
    )


def set_cookie(resp: web.StreamResponse, request: web.Request, name: str, value: str, **kw: Any) -> None:
    resp.set_cookie(name, value, httponly=True, samesite="Strict", secure=secure(request), **kw)


@web.middleware
async def session_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Turn a valid session cookie into request['ui_principal'] for UI pages and for API calls made
    by the UI's scripts. API writes with a session (not a bearer token) must carry the CSRF header."""
    path = request.path
    if path.startswith("/v1/"):
        return await handler(request)  # the node API: certificates, never sessions (and the hot path)
    raw = request.cookies.get(sessions.COOKIE)
    if raw and (path.startswith(PREFIX + "/") or path.startswith("/api/")) and "/static/" not in path:
        ctx = request.app[CTX_KEY]
        key = request.app[KEY_KEY]
        now = ctx.now()
        sess = sessions.decode(key, raw, now)
        if sess is not None:
            async with ctx.tx() as s:
                user = await sessions.load_user(s, key, sess)
                who = await users.principal_for_user(s, user) if user is not None else None
            if who is not None and user is not None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", web.NotAppKeyWarning)
                    request[PRINCIPAL_NAME] = who
                request[SESSION_RKEY] = sess
                request[USER_RKEY] = user
        if (
            path.startswith("/api/")
            and request.method not in ("GET", "HEAD", "OPTIONS")
            and "Authorization" not in request.headers
            and SESSION_RKEY in request
        ):
            got = request.headers.get(CSRF_HEADER, "")
            if not same(got, request[SESSION_RKEY].csrf(key)):
                raise DomainError(Kind.FORBIDDEN, "missing or wrong CSRF token header")
    resp = await handler(request)
    live = request.get(SESSION_RKEY)
    if live is not None and not resp.prepared:
        fresh = sessions.refreshed(live, request.app[CTX_KEY].now())
        if fresh is not None:
            set_session_cookie(resp, request, fresh)
    return resp


def set_session_cookie(resp: web.StreamResponse, request: web.Request, sess: sessions.Session) -> None:
    # No Max-Age: the browser drops it at exit; the server enforces the real expiry in the value.
    set_cookie(resp, request, sessions.COOKIE, sessions.encode(request.app[KEY_KEY], sess), path="/")


@dataclass
class Form:
    """Submitted values and the errors to show beside each field (general ones under "")."""

    values: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def get(self, name: str, default: str = "") -> str:
        return self.values.get(name, default)

    def fail(self, e: DomainError, fields: tuple[str, ...], aliases: Mapping[str, str] | None = None) -> None:
        """Attach an operation's error to the field it names (details.field, or the field the message
        starts with), else to the whole form."""
        name = ""
        if isinstance(e.details, dict) and isinstance(e.details.get("field"), str):
            name = (aliases or {}).get(e.details["field"], e.details["field"])
        if name not in fields:
            first = e.message.split(" ", 1)[0].lower()
            name = next((f for f in fields if f == first or (aliases or {}).get(first) == f), "")
        self.errors[name] = e.message[:1].upper() + e.message[1:]


@dataclass
class Page:
    """One UI request: the request, the caller, the tenant in the URL (if any) and the render helper."""

    request: web.Request
    ctx: OpsContext
    who: Principal
    user: User
    sess: sessions.Session
    tenant: Tenant | None = None
    visible_tenants: list[Tenant] = field(default_factory=list)

    @property
    def key(self) -> bytes:
        return self.request.app[KEY_KEY]

    def can(self, need: Level) -> bool:
        return self.tenant is not None and self.who.can(self.tenant.id, need)

    def url(self, rest: str = "") -> str:
        assert self.tenant is not None
        return f"{PREFIX}/t/{urllib.parse.quote(self.tenant.name)}/{rest}"

    async def form(self) -> Form:
        data = await self.request.post()
        # Passwords are taken as typed; every other value loses surrounding blanks.
        return Form(
            {
                k: v if k == "password" else v.strip()
                for k, v in data.items()
                if isinstance(v, str) and k != CSRF_FIELD
            }
        )

    def render(self, template: str, status: int = 200, **kw: Any) -> web.Response:
        flash = self.request.cookies.get(FLASH_COOKIE, "")
        kw.setdefault("nav", "")
        body = (
            self.request.app[ENV_KEY]
            .get_template(template)
            .render(
                page=self,
                who=self.who,
                user=self.user,
                tenant=self.tenant,
                tenants=self.visible_tenants,
                csrf=self.sess.csrf(self.key),
                can_operate=self.can(Level.OPERATE),
                can_admin=self.can(Level.ADMIN),
                flash=urllib.parse.unquote(flash)[:300],
                now=self.ctx.now(),
                path=self.request.path,
                **kw,
            )
        )
        resp = html_response(body, status)
        if flash:
            resp.del_cookie(FLASH_COOKIE, path=PREFIX)
        return resp

    def redirect(self, to: str, flash: str = "") -> web.Response:
        resp = see_other(to)
        if flash:
            set_cookie(resp, self.request, FLASH_COOKIE, urllib.parse.quote(flash), path=PREFIX)
        return resp

    async def submit(
        self,
        f: Form,
        change: Callable[[Tx], Awaitable[tuple[str, str]]],
        again: Callable[[Form], Awaitable[web.Response]],
        fields: tuple[str, ...],
        aliases: Mapping[str, str] | None = None,
        passes: Callable[[DomainError], bool] = lambda e: e.kind in (Kind.FORBIDDEN, Kind.NOT_FOUND),
    ) -> web.Response:
        """Make the change a form asks for in one transaction, then go where it says with its message
        (change gives both). A refusal shows the page again (again, with 422) with the form and the
        field the error names marked (fields, aliases: Form.fail); refusals that passes picks (by
        default: forbidden, and the page's own object not found) become the error page instead."""
        try:
            async with self.ctx.tx() as s:
                to, message = await change(s)
        except DomainError as e:
            if passes(e):
                raise
            f.fail(e, fields, aliases)
            return await again(f)
        return self.redirect(to, message)


def page(
    *, tenant: bool = False
) -> Callable[[Handler], Callable[[web.Request], Awaitable[web.StreamResponse]]]:
    """Wrap a UI handler: require a session, check CSRF on POST, resolve the URL's tenant through
    the same visibility rule as the API, and turn domain errors into error pages."""

    def deco(fn: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def h(request: web.Request) -> web.StreamResponse:
            who = request.get(PRINCIPAL_NAME)
            if not isinstance(who, Principal):
                nxt = urllib.parse.quote(request.path_qs if request.method == "GET" else PREFIX + "/")
                return see_other(f"{PREFIX}/signin?next={nxt}")
            ctx = request.app[CTX_KEY]
            p = Page(request, ctx, who, request[USER_RKEY], request[SESSION_RKEY])
            try:
                if request.method == "POST":
                    data = await request.post()
                    token = data.get(CSRF_FIELD)
                    if not isinstance(token, str) or not same(token, p.sess.csrf(p.key)):
                        raise DomainError(
                            Kind.FORBIDDEN, "this form has expired or did not come from this site; reload it"
                        )
                async with ctx.tx() as s:
                    p.visible_tenants = (await tenants.list_(s, who, 200, 0))[0]
                if tenant:
                    # A separate transaction: a failed lookup rolls back (and expires) only its own.
                    async with ctx.tx() as s:
                        p.tenant = await resolve_tenant(s, who, request.match_info["tenant"])
                return await fn(p)
            except DomainError as e:
                return error_page(p, e)

        h.__name__ = fn.__name__
        return h

    return deco


def error_page(p: Page, e: DomainError) -> web.Response:
    titles = {
        Kind.NOT_FOUND: "Not found",
        Kind.FORBIDDEN: "Not allowed",
        Kind.UNAVAILABLE: "Temporarily unavailable",
    }
    msg = e.message[:1].upper() + e.message[1:]
    return p.render("error.html", status=e.status, title=titles.get(e.kind, "That did not work"), message=msg)


def see_other(to: str) -> web.Response:
    return web.Response(status=303, headers={"Location": to, "Cache-Control": "no-store"})


def login_csrf(request: web.Request) -> str:
    return request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(24)
