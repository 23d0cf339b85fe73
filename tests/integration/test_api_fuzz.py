"""Every management API operation, fuzzed from the published OpenAPI document (schemathesis).

A real controller (SQLite) runs in its own thread and event loop; the fuzz calls it over HTTPS as the
platform admin, with a seeded tenant (CVLAN, token, node, user, API tokens), region, relay and vrouter
so that paths resolve. Each operation gets schema-valid requests aimed at the seeded objects, and
schema-valid and schema-violating requests with generated paths. Every answer must be below 500 and
match the document: status code, content type, JSON schema of the body and headers; an operation that
needs authentication must refuse a request without it.

Bounded: EXAMPLES per operation and mode, generation derandomized (the same requests on every run),
no example database. About 60-90 s on 2 cores."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis import checks as sc

from tests.harness.controller import Api, RunningController
from tests.harness.seed import seed_tenant

pytestmark = pytest.mark.timeout(600)

T = TypeVar("T")

EXAMPLES: dict[object, int] = {"seeded": 8, GenerationMode.POSITIVE: 4, GenerationMode.NEGATIVE: 4}
"""Random examples per operation for each kind of request (42 operations: about 650 requests), after
the coverage phase's boundary cases (limits, lengths, types, missing and unknown fields: about 1,200)."""
DEADLINE_S = 300
"""A bound on the whole fuzz; reaching it fails the test rather than skipping operations."""

CHECKS = [
    sc.not_a_server_error,
    sc.status_code_conformance,
    sc.content_type_conformance,
    sc.response_schema_conformance,
    sc.response_headers_conformance,
    sc.ignored_auth,
]
"""What every answer is checked for. Not `positive_data_acceptance`: the document gives types and
lengths, not every rule (name syntax, overlapping subnets, known roles), which the API answers with
422; not `negative_data_rejection`: unknown query parameters are ignored, not refused."""


@dataclass
class Target:
    url: str
    ca_file: Path
    token: str
    refs: dict[str, str]
    """path parameter -> a value that names a seeded object"""


class LoopThread:
    """An event loop in a thread, so the controller serves while the fuzz blocks in requests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


async def _seed(rc: RunningController) -> tuple[Api, dict[str, str]]:
    api = rc.api()
    t = await seed_tenant(rc, api, "acme")
    (await api.post("/api/v1/regions", {"name": "eu"})).ok()
    relay = {"name": "relay-1", "region": "eu", "url": "https://relay.example:443", "stun": ""}
    (await api.post("/api/v1/relays", relay)).ok()
    vr = {"name": "vr-1", "region": "eu", "endpoint": "198.51.100.7:51820"}
    (await api.post("/api/v1/vrouters", vr)).ok()
    mapping = {"provider": "corp", "group": "net-admins", "role": "admin"}
    m = (await api.post("/api/v1/tenants/acme/oidc-mappings", mapping)).ok()
    refs = {
        "tenant": "acme",
        "cvlan": str(t.cvlan["name"]),
        "node": str(t.node["id"]),
        "token": str(t.token["id"]),
        "user": str(t.user["email"]),
        "apitoken": str(t.apitoken["id"]),
        "region": "eu",
        "relay": "relay-1",
        "vrouter": "vr-1",
        "mapping": str(m["id"]),
    }
    return api, refs


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    tmp = tmp_path_factory.mktemp("fuzz")
    lt = LoopThread()
    # An identity provider nobody listens for (port 9, discard): group mappings can name it, and
    # the device sign-in answers that it is unreachable.
    idp = {"name": "corp", "issuer": "http://127.0.0.1:9", "client_id": "cvlan", "client_secret": "x"}
    rc = lt.run(
        RunningController(
            tmp / "data", f"sqlite+aiosqlite:///{tmp / 'cvlan.db'}", oidc_providers=[idp]
        ).start()
    )
    try:
        assert rc.c is not None
        _, refs = lt.run(_seed(rc))
        ca_file = tmp / "ca.pem"
        ca_file.write_bytes(rc.c.ca.cert_pem)
        yield Target(rc.url, ca_file, rc.admin_token, refs)
    finally:
        lt.run(rc.stop())
        lt.stop()


def _call(target: Target, session: requests.Session, case: Any) -> None:
    case.call_and_validate(
        base_url=target.url,
        session=session,
        headers={"Authorization": f"Bearer {target.token}"},
        checks=CHECKS,
        verify=str(target.ca_file),
        timeout=30,
    )


def _coverage(target: Target, schema: Any, op: Any) -> None:
    """The coverage phase: deterministic boundary and type cases of every parameter and field."""
    config = schema.config.generation_for(operation=op)
    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    with requests.Session() as session:
        for case in schema.iter_coverage_cases(op, generation_modes=modes, generation_config=config):
            _call(target, session, case)


def _fuzz(target: Target, strategy: Any, examples: int, started: float) -> None:
    session = requests.Session()

    @settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        assert time.monotonic() - started < DEADLINE_S, f"the fuzz took more than {DEADLINE_S} s"
        _call(target, session, case)

    try:
        run()
    finally:
        session.close()


def test_every_operation_answers_below_500_and_as_documented(target: Target) -> None:
    doc = requests.get(target.url + "/api/v1/openapi.json", verify=str(target.ca_file), timeout=30).json()
    schema = schemathesis.openapi.from_dict(doc)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 30, "every route of the table is in the document"
    started = time.monotonic()
    failures: list[str] = []
    for op in operations:
        names = [p.name for p in op.path_parameters]
        seeded = {n: target.refs[n] for n in names if n in target.refs}
        assert len(seeded) == len(names), f"no seeded object for {op.label}: {names}"
        try:
            _coverage(target, schema, op)
        except (Exception, BaseExceptionGroup) as e:  # noqa: BLE001 - collect every failure, then report
            failures.append(f"{op.label} (coverage): {e}")
        runs: list[tuple[object, Any]] = [
            ("seeded", op.as_strategy(path_parameters=seeded) if seeded else op.as_strategy()),
            (GenerationMode.POSITIVE, op.as_strategy(generation_mode=GenerationMode.POSITIVE)),
            (GenerationMode.NEGATIVE, op.as_strategy(generation_mode=GenerationMode.NEGATIVE)),
        ]
        for kind, strategy in runs:
            try:
                _fuzz(target, strategy, EXAMPLES[kind], started)
            except (Exception, BaseExceptionGroup) as e:  # noqa: BLE001 - collect every failure, then report
                failures.append(f"{op.label} ({kind}): {e}")
    assert not failures, "\n\n".join(failures)
