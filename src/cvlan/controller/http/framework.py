"""A small route table over aiohttp: typed bodies, auth, one error format, OpenAPI from the same table.

The table is also what the cross-tenant isolation tests iterate over, so a new endpoint is tested
as soon as it is declared."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Generic, TypedDict, TypeVar

from aiohttp import web
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, ConfigDict, ValidationError

from cvlan.common.numbers import parse_uint
from cvlan.controller.audit import request_id_var
from cvlan.controller.auth import Principal
from cvlan.controller.ca import CertificateAuthority
from cvlan.controller.errors import DomainError, Kind
from cvlan.controller.ops.context import OpsContext

log = logging.getLogger(__name__)

REQUESTS = Counter("cvlan_http_requests_total", "HTTP requests", ["route", "method", "status"])
LATENCY = Histogram(
    "cvlan_http_request_seconds",
    "HTTP request latency",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)

CTX_KEY = web.AppKey("ops_ctx", OpsContext)
CA_KEY = web.AppKey("ca", CertificateAuthority)
AUTH_KEY = web.AppKey("authenticator", object)
MAX_BODY_KEY = web.AppKey("max_body", int)
CA_PIN_KEY = web.AppKey("ca_fingerprint", str)


class Body(BaseModel):
    """Base of request bodies: unknown fields and type coercion are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)


@dataclass
class Call:
    """What a handler receives."""

    request: web.Request
    ctx: OpsContext
    who: Principal
    body: Any
    params: dict[str, str]

    def q(self, name: str) -> str | None:
        v = self.request.query.get(name)
        if v and "\x00" in v:
            raise DomainError(Kind.INVALID, f"{name}: must not contain NUL characters", {"field": name})
        return v if v else None

    @property
    def page(self) -> tuple[int, int]:
        return parse_page(self.request)


Handler = Callable[[Call], Awaitable[Any]]


@dataclass
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    body: type[BaseModel] | None = None
    status: int = 200
    tenant_scoped: bool = False
    auth: bool = True
    query: tuple[str, ...] = ()
    paginated: bool = False
    mutation: bool = field(init=False)

    def __post_init__(self) -> None:
        self.mutation = self.method in ("POST", "PUT", "PATCH", "DELETE")
        self.tenant_scoped = "{tenant}" in self.path


ROUTES: list[Route] = []


def route(
    method: str,
    path: str,
    *,
    summary: str,
    tag: str,
    body: type[BaseModel] | None = None,
    status: int = 200,
    auth: bool = True,
    query: tuple[str, ...] = (),
    paginated: bool = False,
) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        ROUTES.append(
            Route(method, path, fn, summary, tag, body, status, auth=auth, query=query, paginated=paginated)
        )
        return fn

    return deco


MAX_LIMIT = 1000
MAX_OFFSET = 1_000_000_000
"""Bounds of a listing's page: limit 1-1000 (default 100), offset 0-1,000,000,000 (default 0)."""


def parse_page(request: web.Request) -> tuple[int, int]:
    limit = parse_uint(request.query.get("limit", "100"), MAX_LIMIT)
    offset = parse_uint(request.query.get("offset", "0"), MAX_OFFSET)
    if limit is None or limit < 1 or offset is None:
        raise DomainError(
            Kind.INVALID,
            f"limit must be a whole number 1-{MAX_LIMIT} and offset 0-{MAX_OFFSET} (ASCII digits)",
            {"field": "offset" if limit else "limit"},
        )
    return limit, offset


V = TypeVar("V")


class Page(TypedDict, Generic[V]):
    """One page of a listing (paginated routes): its items, how many there are in all, and the
    limit and offset asked for."""

    items: list[V]
    total: int
    limit: int
    offset: int


def page(items: list[V], total: int, limit: int, offset: int) -> Page[V]:
    """A page of items."""
    return {"items": items, "total": total, "limit": limit, "offset": offset}


def _default(o: object) -> object:
    if isinstance(o, dt.datetime):
        return o.isoformat().replace("+00:00", "Z")
    if isinstance(o, bytes):
        return o.hex()
    if isinstance(o, BaseModel):
        return o.model_dump()
    raise TypeError(f"cannot serialise {type(o).__name__}")


def dumps(obj: object) -> str:
    return json.dumps(obj, default=_default, separators=(",", ":"))


REASONS: dict[int, bytes] = {s.value: s.phrase.encode() for s in HTTPStatus}
"""The reason phrase of each status, as the web stack writes it (the lean server writes the same)."""


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """The one error format of every HTTP answer of the controller (docs/API.md, "Errors")."""
    return {"error": {"code": code, "message": message, "details": details}}


def error_response(status: int, code: str, message: str, details: Any = None) -> web.Response:
    return web.json_response(error_body(code, message, details), status=status, dumps=dumps)


def _validation_message(e: ValidationError) -> tuple[str, list[dict[str, Any]]]:
    details = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "body"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        details.append({"field": loc, "message": msg})
    first = details[0] if details else {"field": "body", "message": "invalid"}
    return f"{first['field']}: {first['message']}", details


async def _read_body(request: web.Request, model: type[BaseModel]) -> BaseModel:
    raw = await request.read()
    if len(raw) > request.app[MAX_BODY_KEY]:
        raise DomainError(Kind.TOO_LARGE, f"request body is larger than {request.app['max_body']} bytes")
    try:
        data = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError) as e:
        raise DomainError(Kind.INVALID, f"request body is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise DomainError(Kind.INVALID, "request body must be a JSON object")
    where = _nul_in(data, "")
    if where is not None:
        raise DomainError(
            Kind.INVALID, f"{where or 'body'}: strings must not contain NUL characters", {"field": where}
        )
    try:
        return model.model_validate(data)
    except ValidationError as e:
        msg, details = _validation_message(e)
        raise DomainError(Kind.INVALID, msg, details) from e


def _nul_in(value: object, at: str) -> str | None:
    """Where in a parsed JSON document a string (key or value) holds a NUL character, if anywhere.
    No store keeps NUL in text (PostgreSQL refuses it), and no field of this API needs one."""
    if isinstance(value, str):
        return at if "\x00" in value else None
    items: list[tuple[str, object]] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if "\x00" in k:
                return at or "body"
            items.append((f"{at}.{k}" if at else k, v))
    elif isinstance(value, list):
        items = [(f"{at}.{i}", v) for i, v in enumerate(value)]
    for path, v in items:
        found = _nul_in(v, path)
        if found is not None:
            return found
    return None


def make_handler(
    r: Route, authenticate: Callable[[web.Request], Awaitable[Principal]]
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def h(request: web.Request) -> web.StreamResponse:
        ctx = request.app[CTX_KEY]
        who = await authenticate(request) if r.auth else Principal(actor="anonymous")
        body = await _read_body(request, r.body) if r.body is not None else None
        result = await r.handler(Call(request, ctx, who, body, dict(request.match_info)))
        if isinstance(result, web.StreamResponse):
            return result
        if result is None:
            return web.Response(status=204)
        return web.json_response(result, status=r.status, dumps=dumps)

    return h


_RID_PREFIX = uuid.uuid4().hex[:12]
_rid_counter = itertools.count(1)
_METRIC_CHILDREN: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def request_id(given: str) -> str:
    """The caller's X-Request-Id if it is a sane one, else a new id: unique per process start (random
    prefix) and cheap on the poll path (a counter, no syscall)."""
    if not given or len(given) > 64 or not given.replace("-", "").isalnum():
        return f"{_RID_PREFIX}{next(_rid_counter):012x}"
    return given


def route_metrics(route_name: str, method: str, status: int) -> tuple[Any, Any]:
    key = (route_name, method, status)
    got = _METRIC_CHILDREN.get(key)
    if got is None:
        got = (REQUESTS.labels(route_name, method, str(status)), LATENCY.labels(route_name, method))
        _METRIC_CHILDREN[key] = got
    return got


@web.middleware
async def request_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Request id, timing, metrics, logging, and the one mapping of DomainError to HTTP."""
    rid = request_id(request.headers.get("X-Request-Id", ""))
    token = request_id_var.set(rid)
    t0 = time.perf_counter()
    info = request.match_info.route.resource
    route_name = info.canonical if info is not None else "unmatched"
    try:
        try:
            resp = await handler(request)
        except DomainError as e:
            resp = error_response(e.status, e.kind.value, e.message, e.details)
            if e.kind == Kind.UNAVAILABLE:
                resp.headers["Retry-After"] = "2"
        except web.HTTPException as e:
            if e.status < 400:
                raise
            code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(e.status, "http_error")
            resp = error_response(e.status, code, e.reason)
        except Exception:
            log.exception("unhandled error", extra={"request_id": rid, "path": request.path})
            resp = error_response(500, "internal", f"internal error (request id {rid})")
        resp.headers["X-Request-Id"] = rid
        dur = time.perf_counter() - t0
        count, latency = route_metrics(route_name, request.method, resp.status)
        count.inc()
        latency.observe(dur)
        if not request.path.startswith("/v1/"):
            log.info(
                "request",
                extra={
                    "request_id": rid,
                    "method": request.method,
                    "path": request.path,
                    "status": resp.status,
                    "duration_ms": round(dur * 1000, 2),
                },
            )
        return resp
    finally:
        request_id_var.reset(token)


def openapi(title: str, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route in the table."""
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "properties": {
                "error": {
                    "type": "object",
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "details": {}},
                    "required": ["code", "message"],
                }
            },
        },
        "Page": {
            "type": "object",
            "properties": {
                "items": {"type": "array", "items": {"type": "object"}},
                "total": {"type": "integer", "minimum": 0},
                "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
                "offset": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET},
            },
            "required": ["items", "total", "limit", "offset"],
        },
        "Object": {"type": "object"},
    }
    for r in ROUTES:
        op: dict[str, Any] = {
            "summary": r.summary,
            "tags": [r.tag],
            "operationId": r.handler.__name__,
            "parameters": [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                for p in _path_params(r.path)
            ]
            + [{"name": q, "in": "query", "required": False, "schema": {"type": "string"}} for q in r.query]
            + (
                [
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
                    },
                    {
                        "name": "offset",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET},
                    },
                ]
                if r.paginated
                else []
            ),
            "responses": {
                str(r.status): _success(r),
                "default": {
                    "description": "error",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                },
            },
        }
        if r.auth:
            op["security"] = [{"bearer": []}]
        if r.body is not None:
            name = r.body.__name__
            schemas[name] = r.body.model_json_schema(ref_template="#/components/schemas/{model}")
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}},
            }
        paths.setdefault(r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _success(r: Route) -> dict[str, Any]:
    """The documented success answer: nothing (204), a page of a listing, or one JSON object."""
    if r.status == 204:
        return {"description": "done; no content"}
    ref = "#/components/schemas/" + ("Page" if r.paginated else "Object")
    return {"description": "success", "content": {"application/json": {"schema": {"$ref": ref}}}}


def _path_params(path: str) -> list[str]:
    return [seg[1:-1] for seg in path.split("/") if seg.startswith("{") and seg.endswith("}")]
