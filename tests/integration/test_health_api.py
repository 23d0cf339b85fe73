"""The health API over a running controller: reports from enrolled nodes become the CVLAN's matrix
and events; bad reports change nothing; another tenant sees none of it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from cvlan.client.controller import ControlError
from cvlan.controller.nodeapi.handlers import NODEAPI_KEY
from cvlan.wire.pb import node_pb2 as pb
from tests.harness.controller import RunningController
from tests.harness.nodes import enrol, make_token

DIRECT, RELAY = pb.PEER_HEALTH_PATH_DIRECT, pb.PEER_HEALTH_PATH_RELAY


def _counted(metrics: str, kind: str) -> float:
    line = f'cvlan_health_events_total{{kind="{kind}"}} '
    return next(float(x.split()[-1]) for x in metrics.splitlines() if x.startswith(line))


def _cli(rc: RunningController, *argv: str) -> str:
    conf = str(rc.settings.data_dir / "admin.conf")
    cvlan = str(Path(sys.executable).parent / "cvlan")
    r = subprocess.run([cvlan, "--config", conf, *argv], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _peer(node_id: int, path: int, answered: int = 20, region: str = "") -> pb.PeerHealth:
    return pb.PeerHealth(
        node_id=node_id, path=path, relay_region=region, rtt_us=2500, probes_sent=20, probes_answered=answered
    )


async def test_reports_make_the_matrix_and_events_and_other_tenants_see_nothing(
    sqlite_controller: RunningController,
) -> None:
    rc = sqlite_controller
    fallbacks = _counted(await rc.metrics(), "relay_fallback")
    token = await make_token(rc, uses=2)
    a, b = await enrol(rc, token, "a"), await enrol(rc, token, "b")
    for n in (a, b):
        await n.client.poll(0)
    await a.client.report([], pb.HealthSummary(peers=[_peer(b.node_id, DIRECT)]))
    assert rc.c is not None
    await rc.c.app[NODEAPI_KEY].liveness.flush()  # each written report is compared with the last
    await a.client.report([], pb.HealthSummary(peers=[_peer(b.node_id, RELAY, region="eu")]))
    await b.client.report([], pb.HealthSummary(peers=[_peer(a.node_id, DIRECT, answered=0)]))
    # A report with a bad entry is refused whole: nothing of it is kept.
    try:
        await b.client.report([], pb.HealthSummary(peers=[_peer(a.node_id, DIRECT, answered=21)]))
        raise AssertionError("a report with more answers than probes was accepted")
    except ControlError as e:
        assert e.status == 422
    # A poll's summary, written after the report, keeps the report's peer entries.
    await a.client.poll(0, health=pb.HealthSummary(peers_total=1, peers_relay=1))
    assert rc.c is not None
    await rc.c.app[NODEAPI_KEY].liveness.flush()
    api = rc.api()
    h = (await api.get("/api/v1/tenants/acme/cvlans/office/health")).ok()
    assert [(p["src_name"], p["dst_name"], p["state"], p["relay_region"]) for p in h["pairs"]] == [
        ("b", "a", "down", ""),
        ("a", "b", "relay", "eu"),
    ]
    assert h["summary"]["down"] == 1 and h["unreachable"] == [{"id": a.node_id, "name": "a"}]
    kinds = [(e["kind"], e["node"], e["peer"]) for e in h["events"]]
    assert kinds == [("unreachable", "a", ""), ("relay_fallback", "a", "b")]
    assert _counted(await rc.metrics(), "relay_fallback") == fallbacks + 1
    ev = (await api.get("/api/v1/tenants/acme/health/events?limit=1")).ok()
    assert ev["total"] == 1 and ev["items"][0]["kind"] == "unreachable"
    assert (await api.get("/api/v1/tenants/acme/health/events?limit=0")).status == 422
    node = (await api.get(f"/api/v1/tenants/acme/nodes/{a.node_id}")).ok()
    assert node["health"]["peers"][0]["path"] == "relay" and node["health"]["peers_at"]
    assert node["health"]["peers_relay"] == 1
    # The same through the command line: the matrix worst first, the events, the node's own peers.
    out = await asyncio.to_thread(_cli, rc, "cvlan", "health", "--tenant", "acme", "office")
    lines = out.splitlines()
    assert lines[0] == "CVLAN office: 2 members, 2 pairs (1 down, 1 relay)", out
    assert "UNREACHABLE: no peer reaches a" in lines
    assert any("relay_fallback  a → b  relay eu" in x for x in lines), out
    assert any(x.startswith("history: 1 sample since ") for x in lines), out
    rows = [x.split() for x in lines if x.startswith(("a ", "b "))]
    assert [r[:4] for r in rows] == [["b", "a", "down", "direct"], ["a", "b", "relay", "relay"]], out
    out = await asyncio.to_thread(_cli, rc, "node", "show", "--tenant", "acme", "a")
    assert "peers as a saw them" in out and "relay eu" in out and "2.5 ms" in out, out
    assert [x.split()[:3] for x in out.splitlines() if "relay eu" in x] == [["a", "b", "relay"]], out
    # Another tenant: the same paths answer 404, and its own events list is empty.
    await make_token(rc, tenant="globex", cvlan="lab")
    assert (await api.get("/api/v1/tenants/globex/cvlans/office/health")).status == 404
    assert (await api.get("/api/v1/tenants/globex/health/events")).ok()["items"] == []
    for n in (a, b):
        await n.client.close()
