"""Bad input gets a 4xx with a message that says what is wrong, and nothing is written."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.harness.controller import Api, RunningController

BASE = "/api/v1/tenants/acme"


async def _state(api: Api) -> tuple[int, int]:
    audit = (await api.get("/api/v1/audit")).ok()["total"]
    cvl = (await api.get(BASE + "/cvlans")).ok()["total"]
    return audit, cvl


@pytest.fixture
async def api(controller: RunningController) -> Api:
    a = controller.api()
    (await a.post("/api/v1/tenants", {"name": "acme"})).ok()
    (await a.post(BASE + "/cvlans", {"name": "taken"})).ok()
    return a


CASES: list[tuple[str, Any, int, str]] = [
    ("malformed JSON", b"{not json", 422, "not valid JSON"),
    ("array body", b"[1,2]", 422, "must be a JSON object"),
    ("unknown field", {"name": "x", "colour": "red"}, 422, "colour: unknown field"),
    ("wrong type", {"name": 5}, 422, "name: Input should be a valid string"),
    ("missing field", {}, 422, "name: Field required"),
    ("control character", {"name": "ab\x07c"}, 422, "is not valid"),
    ("newline", {"name": "ab\nc"}, 422, "is not valid"),
    ("only digits", {"name": "12345"}, 422, "not only digits"),
    ("too long", {"name": "x" * 64}, 422, "at most 63 characters"),
    ("duplicate name", {"name": "taken"}, 409, "already exists"),
    ("bad mode", {"name": "y", "mode": "star"}, 422, "expected mesh or hub"),
    ("bad subnet", {"name": "y", "subnet": "300.1.1.0/24"}, 422, "subnet"),
    ("ipv6 subnet", {"name": "y", "subnet": "fd00::/64"}, 422, "only IPv4"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
async def test_refused_with_message_and_nothing_written(api: Api, case: tuple[str, Any, int, str]) -> None:
    _, body, status, message = case
    before = await _state(api)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    res = await api.request("POST", BASE + "/cvlans", raw=raw, headers={"Content-Type": "application/json"})
    assert res.status == status, res.body
    err = res.body["error"]
    assert set(err) == {"code", "message", "details"}
    assert message in err["message"]
    assert await _state(api) == before


async def test_oversized_body(api: Api) -> None:
    before = await _state(api)
    res = await api.request("POST", BASE + "/cvlans", raw=b'{"name":"' + b"x" * (2 << 20) + b'"}')
    assert res.status == 413
    assert res.body["error"]["code"] == "too_large"
    assert await _state(api) == before


async def test_bad_pagination_and_unknown_routes(api: Api) -> None:
    assert (await api.get(BASE + "/cvlans?limit=0")).status == 422
    assert (await api.get(BASE + "/cvlans?limit=abc")).status == 422
    res = await api.get("/api/v1/nonsense")
    assert res.status == 404 and res.body["error"]["code"] == "not_found"
    assert (await api.request("PUT", "/api/v1/tenants")).status == 405


async def test_token_and_user_validation(api: Api) -> None:
    before = await _state(api)
    for body, field in [
        ({"cvlan": "taken", "expires": "tomorrow"}, "expires"),
        ({"cvlan": "taken", "uses": 0}, "uses"),
        ({"cvlan": "taken", "tags": ["bad tag"]}, "tag"),
        ({"cvlan": "nope"}, "CVLAN"),
    ]:
        res = await api.post(BASE + "/tokens", body)
        assert res.status in (404, 422) and field in res.body["error"]["message"], res.body
    for body, word in [
        ({"email": "not-an-email", "role": "admin"}, "email"),
        ({"email": "a@b.example", "role": "king"}, "role"),
        ({"email": "a@b.example", "role": "admin", "password": "short"}, "password"),
    ]:
        res = await api.post(BASE + "/users", body)
        assert res.status == 422 and word in res.body["error"]["message"], res.body
    assert await _state(api) == before


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.dictionaries(
        st.sampled_from(["name", "subnet", "mode", "extra"]),
        st.one_of(
            st.text(max_size=70), st.integers(), st.none(), st.booleans(), st.lists(st.integers(), max_size=2)
        ),
    )
)
async def test_fuzzed_bodies_never_500_and_refusals_write_nothing(api: Api, body: dict[str, Any]) -> None:
    before = await _state(api)
    res = await api.post(BASE + "/cvlans", body)
    assert res.status in (201, 404, 409, 422), (body, res.status, res.body)
    if res.status != 201:
        assert await _state(api) == before
    else:
        await api.delete(BASE + f"/cvlans/{res.body['id']}")


BAD_REFS = ["²", "٣", "1²", "564800767201586710577152", "9223372036854775808", "a%00b"]
"""References that are not ASCII-digit ids within 64 bits, nor a name anything can have."""


def _ref_paths(ref: str) -> list[tuple[str, str]]:
    t = f"/api/v1/tenants/{ref}"
    c = BASE + f"/cvlans/{ref}"
    return [
        ("GET", t),
        ("DELETE", t),
        ("GET", t + "/cvlans"),
        ("GET", c),
        ("DELETE", c),
        ("GET", c + "/policy"),
        ("DELETE", c + "/policy"),
        ("GET", BASE + f"/nodes/{ref}"),
        ("DELETE", BASE + f"/nodes/{ref}"),
        ("DELETE", BASE + f"/tokens/{ref}"),
        ("DELETE", BASE + f"/users/{ref}"),
        ("DELETE", BASE + f"/apitokens/{ref}"),
        ("DELETE", f"/api/v1/regions/{ref}"),
        ("DELETE", f"/api/v1/relays/{ref}"),
        ("DELETE", f"/api/v1/vrouters/{ref}"),
    ]


@pytest.mark.parametrize("ref", BAD_REFS)
async def test_odd_references_are_not_found(api: Api, ref: str) -> None:
    before = await _state(api)
    for method, path in _ref_paths(ref):
        res = await api.request(method, path)
        assert res.status == 404, (method, path, res.status, res.body)
        assert res.body["error"]["code"] == "not_found"
    assert await _state(api) == before


PAGINATED = [
    "/api/v1/audit",
    "/api/v1/nodes",
    "/api/v1/regions",
    "/api/v1/relays",
    "/api/v1/vrouters",
    "/api/v1/tenants",
    BASE + "/cvlans",
    BASE + "/nodes",
    BASE + "/tokens",
    BASE + "/users",
    BASE + "/apitokens",
    BASE + "/audit",
    BASE + "/denied",
]


@pytest.mark.parametrize(
    "query",
    [
        "offset=564800767201586710577152",
        "offset=1000000001",
        "limit=18446744073709551617",
        "limit=1001",
        "limit=²",
        "offset=٣",
        "offset=1_0",
        "offset=-1",
    ],
)
async def test_pages_beyond_the_bounds_are_refused(api: Api, query: str) -> None:
    for path in PAGINATED:
        res = await api.get(f"{path}?{query}")
        assert res.status == 422, (path, query, res.status, res.body)
        assert "offset 0-1000000000" in res.body["error"]["message"]
    last = await api.get("/api/v1/audit?offset=1000000000&limit=1000")
    assert last.ok()["items"] == [] and last.ok()["offset"] == 1_000_000_000


async def test_durations_and_times_out_of_range_are_refused(api: Api) -> None:
    before = await _state(api)
    for body in [{"cvlan": "taken", "expires": "9999999d"}, {"cvlan": "taken", "uses": 10**30}]:
        res = await api.post(BASE + "/tokens", body)
        assert res.status == 422, res.body
    res = await api.post(BASE + "/apitokens", {"role": "viewer", "expires": "999999999w"})
    assert res.status == 422, res.body
    for query in ["since=9999999d", "since=0001-01-01T00:00:00%2B01:00", "until=99999999w"]:
        res = await api.get(f"/api/v1/audit?{query}")
        assert res.status == 422 and res.body["error"]["code"] == "invalid", (query, res.body)
    assert await _state(api) == before


@pytest.mark.parametrize("name", ["0\n", "acme\n"])
async def test_names_with_a_trailing_newline_are_refused(api: Api, name: str) -> None:
    before = await _state(api)
    for path in ["/api/v1/tenants", BASE + "/cvlans", "/api/v1/regions"]:
        res = await api.post(path, {"name": name})
        assert res.status == 422 and "is not valid" in res.body["error"]["message"], (path, res.body)
    assert await _state(api) == before
    assert (await api.get("/api/v1/regions")).ok()["total"] == 0


async def test_nul_characters_are_refused(api: Api) -> None:
    """PostgreSQL stores no NUL in text: such input was a 500 there."""
    before = await _state(api)
    for path, body, field in [
        ("/api/v1/tenants", {"name": "acme2", "display_name": "a\x00b"}, "display_name"),
        (BASE + "/tokens", {"cvlan": "taken", "tags": ["ok", "x\x00"]}, "tags.1"),
        (
            BASE + "/cvlans/taken/policy",
            {"rules": [{"src": ["*"], "dst": ["*"], "comment": "\x00"}]},
            "rules.0",
        ),
    ]:
        res = await api.request("PUT" if path.endswith("policy") else "POST", path, json=body)
        assert res.status == 422, (path, res.body)
        assert res.body["error"]["message"].startswith(field) and "NUL" in res.body["error"]["message"]
    for query in ["actor=a%00b", "action=%00", "since=1h%00"]:
        res = await api.get(f"/api/v1/audit?{query}")
        assert res.status == 422 and "NUL" in res.body["error"]["message"], (query, res.body)
    res = await api.get(BASE + "/nodes?cvlan=a%00")
    assert res.status == 422
    assert await _state(api) == before
