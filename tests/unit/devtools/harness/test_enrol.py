"""The enrolment token plan driven with an async and with a blocking client: the same requests, the
tenant and CVLAN created only when missing, a refusal raised as ApiCallError."""

from __future__ import annotations

from typing import Any

import pytest

from cvlan.devtools.harness.enrol import ApiCallError, make_token, make_token_sync


class Api:
    """A management API that knows some paths (GET answers 200) and answers every POST with status."""

    def __init__(self, known: set[str], status: int = 201) -> None:
        self.known = known
        self.status = status
        self.seen: list[tuple[str, str, dict[str, Any] | None]] = []

    def call(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, Any]:
        self.seen.append((method, path, body))
        if method == "GET":
            return (200, {}) if path in self.known else (404, {})
        return self.status, {"token": "cvet_x", "path": path}

    async def acall(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, Any]:
        return self.call(method, path, body)


@pytest.mark.parametrize("known", [set(), {"/api/v1/tenants/acme"}])
async def test_both_drivers_send_the_same_requests(known: set[str]) -> None:
    blocking, asynchronous = Api(known), Api(known)
    got = make_token_sync(blocking.call, "acme", "office", {"mode": "hub"}, reusable=True)
    assert got == await make_token(asynchronous.acall, "acme", "office", {"mode": "hub"}, reusable=True)
    assert got["path"] == "/api/v1/tenants/acme/tokens"
    assert blocking.seen == asynchronous.seen
    posts = [path for method, path, _ in blocking.seen if method == "POST"]
    created = [] if known else ["/api/v1/tenants"]
    assert posts == [*created, "/api/v1/tenants/acme/cvlans", "/api/v1/tenants/acme/tokens"]
    assert blocking.seen[-1][2] == {"cvlan": "office", "reusable": True}


async def test_a_refusal_stops_the_plan() -> None:
    api = Api({"/api/v1/tenants/acme", "/api/v1/tenants/acme/cvlans/office"}, status=403)
    with pytest.raises(ApiCallError, match="403"):
        make_token_sync(api.call)
    with pytest.raises(ApiCallError, match="403"):
        await make_token(api.acall)
