"""Registrations written in batches (group commit), on SQLite and PostgreSQL.

The enrolments are handed to the node API's answer_register together (as the lean server and the web
stack do for requests that arrive together), so that they meet in one batch deterministically."""

from __future__ import annotations

import asyncio
import ipaddress
import os

from sqlalchemy import text

from cvlan.client import tls
from cvlan.controller.audit import request_id_var
from cvlan.controller.errors import DomainError
from cvlan.controller.nodeapi import NODEAPI_KEY
from cvlan.controller.nodeapi.handlers import NodeApi
from cvlan.controller.ops import cvlans, nodes
from cvlan.wire import nodeproto as wire
from cvlan.wire.pb import node_pb2 as pb
from tests.harness.controller import RunningController
from tests.harness.nodes import make_token

CSR = tls.new_key_and_csr()[1]


def _api(rc: RunningController) -> NodeApi:
    assert rc.c is not None
    return rc.c.app[NODEAPI_KEY]


async def _register(
    api: NodeApi, token: str, hostname: str, key: bytes | None = None, csr: str = CSR, rid: str = ""
) -> pb.RegisterResponse | DomainError:
    req = pb.RegisterRequest(
        capability_version=wire.CAPABILITY_VERSION,
        token=token,
        wg_public_key=key or os.urandom(32),
        csr_pem=csr,
        hostname=hostname,
    )
    request_id_var.set(rid)
    try:
        return await api.answer_register(None, req)
    except DomainError as e:
        return e


async def _rows(rc: RunningController, sql: str) -> list[tuple[object, ...]]:
    assert rc.c is not None
    async with rc.c.ctx.tx() as s:
        return [tuple(r) for r in (await s.execute(text(sql))).all()]


async def test_enrolments_together_share_one_transaction_and_get_distinct_addresses(
    controller: RunningController,
) -> None:
    api = _api(controller)
    tokens = [await make_token(controller, "acme", f"c{i}", uses=12) for i in range(4)]
    assert controller.c is not None
    ctx = controller.c.ctx

    async def alone(i: int) -> str:
        # An administrator-side enrolment in its own transaction, racing the batch for addresses.
        for _ in range(20):
            try:
                async with ctx.tx() as s:
                    t = await cvlans.consume_token(ctx, s, tokens[i % 4])
                    return (await nodes.create(ctx, s, t, os.urandom(32), f"solo{i}")).address
            except DomainError as e:
                if e.kind.value != "unavailable":
                    raise
        raise AssertionError("kept failing")

    batch = [_register(api, tokens[i % 4], "same" if i < 3 else f"n{i}", rid=f"rid-{i}") for i in range(40)]
    got = await asyncio.gather(*batch, *(alone(i) for i in range(8)))
    answers = [r for r in got[:40] if isinstance(r, pb.RegisterResponse)]
    assert len(answers) == 40, [r for r in got[:40] if isinstance(r, DomainError)]
    assert api.enrolments.batches == 1  # the 40 arrived together: one transaction
    addrs = [a.address.removesuffix("/32") for a in answers] + [str(a) for a in got[40:]]
    assert len(set(addrs)) == 48
    by_cvlan: dict[str, list[str]] = {}
    for a in answers:
        assert ipaddress.ip_address(a.address.removesuffix("/32")) in ipaddress.ip_network(a.cvlan_subnet)
        by_cvlan.setdefault(a.cvlan_name, []).append(a.node_name)
    assert sorted(a.node_name for a in answers[:3]) == ["same", "same-2", "same-3"]
    assert await _rows(controller, "SELECT uses FROM enrollment_tokens ORDER BY id") == [(12,)] * 4
    # What the database holds matches the answers: one address row per node, one audit record each
    # carrying its own request id.
    nodes_db = await _rows(controller, "SELECT name, cert_serial FROM nodes")
    assert len(nodes_db) == 48
    assert all(serial for name, serial in nodes_db if not str(name).startswith("solo"))
    assert len(await _rows(controller, "SELECT address FROM ip_allocations")) == 48
    audit_rids = await _rows(controller, "SELECT request_id FROM audit_log WHERE action = 'node.register'")
    assert sorted(r for (r,) in audit_rids if r) == sorted(f"rid-{i}" for i in range(40))


async def test_refused_enrolments_leave_nothing_and_the_others_of_the_batch_go_on(
    controller: RunningController,
) -> None:
    api = _api(controller)
    good = await make_token(controller, "acme", "office", uses=10)
    two = await make_token(controller, "acme", "lab", uses=2)
    revoked = await make_token(controller, "acme", "office")
    listed = (await controller.api().get("/api/v1/tenants/acme/tokens")).ok()["items"]
    tid = next(t["id"] for t in listed if t["prefix"] == revoked.split("_")[1])
    (await controller.api().delete(f"/api/v1/tenants/acme/tokens/{tid}")).ok()
    first = await _register(api, good, "first")
    assert isinstance(first, pb.RegisterResponse)
    twin = os.urandom(32)
    got = await asyncio.gather(
        _register(api, good, "ok1"),
        _register(api, good, "bad-csr", csr="-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n"),
        _register(api, revoked, "revoked"),
        *(_register(api, two, f"lab{i}") for i in range(4)),
        _register(api, good, "twin-a", key=twin),
        _register(api, good, "twin-b", key=twin),
        _register(api, "not-a-token", "x"),
        _register(api, "cvet_nope_nope", "unknown"),
        _register(api, good, "ok2"),
    )
    kinds = [r.kind.value if isinstance(r, DomainError) else "ok" for r in got]
    assert kinds[0] == "ok" and kinds[1] == "invalid" and kinds[2] == "unauthenticated"
    assert sorted(kinds[3:7]) == ["ok", "ok", "unauthenticated", "unauthenticated"]
    # The same key twice (a node retrying while its first request is in flight): the second is a
    # retry after the first committed and gets the same node, as without batching.
    assert kinds[7:9] == ["ok", "ok"]
    twins = [r for r in got[7:9] if isinstance(r, pb.RegisterResponse)]
    assert twins[0].node_id == twins[1].node_id
    assert kinds[9:] == ["unauthenticated", "unauthenticated", "ok"]
    # Only the accepted nodes exist, each with its address and its token use, nothing else.
    names = sorted(str(n) for (n,) in await _rows(controller, "SELECT name FROM nodes"))
    accepted = [r for r in got if isinstance(r, pb.RegisterResponse)]
    assert names == sorted({"first", *(r.node_name for r in accepted)}) and len(names) == 6
    assert len(await _rows(controller, "SELECT id FROM ip_allocations")) == 6
    uses = await _rows(controller, "SELECT prefix, uses FROM enrollment_tokens")
    assert sorted(uses) == sorted(
        [(good.split("_")[1], 4), (two.split("_")[1], 2), (revoked.split("_")[1], 0)]
    )


async def test_a_failed_batch_registers_each_node_alone(controller: RunningController) -> None:
    """The database refuses one node's row when the batch commits its INSERT: nothing of the batch was
    written, every other node is registered alone and succeeds, the refused one gets its error."""
    api = _api(controller)
    token = await make_token(controller, "acme", "office", uses=20)
    assert controller.c is not None
    async with controller.c.ctx.tx() as s:
        if s.get_bind().dialect.name == "postgresql":
            await s.execute(
                text(
                    "CREATE FUNCTION refuse_poison() RETURNS trigger AS $$ BEGIN IF NEW.name = 'poison' "
                    "THEN RAISE EXCEPTION 'refused' USING ERRCODE = 'check_violation'; END IF; RETURN NEW; "
                    "END $$ LANGUAGE plpgsql"
                )
            )
            await s.execute(
                text(
                    "CREATE TRIGGER poison BEFORE INSERT ON nodes "
                    "FOR EACH ROW EXECUTE FUNCTION refuse_poison()"
                )
            )
        else:
            await s.execute(
                text(
                    "CREATE TRIGGER poison BEFORE INSERT ON nodes WHEN NEW.name = 'poison' "
                    "BEGIN SELECT RAISE(ABORT, 'refused'); END"
                )
            )
    got = await asyncio.gather(*(_register(api, token, "poison" if i == 3 else f"n{i}") for i in range(8)))
    kinds = [r.kind.value if isinstance(r, DomainError) else "ok" for r in got]
    assert kinds == ["ok"] * 3 + ["conflict"] + ["ok"] * 4
    assert api.enrolments.batches == 0  # the batch's transaction rolled back; each went alone
    assert len(await _rows(controller, "SELECT id FROM nodes")) == 7
    assert len(await _rows(controller, "SELECT id FROM ip_allocations")) == 7
    assert await _rows(controller, "SELECT uses FROM enrollment_tokens") == [(7,)]
