"""What peer-health reports cost the controller: the report request itself, and the liveness flush
that writes them and finds their events and history samples (docs/HEALTH.md).

An in-process controller (SQLite, then PostgreSQL) with a fake clock; `--cvlans` CVLANs of `--per`
nodes register; every node reports its peers three times, each batch written by one flush: first
reports (every CVLAN sampled), then 60 s later all pairs fall back to a relay (an event per pair and
a sample per CVLAN), then 10 s later the same again (nothing due). Printed: the CPU time of each
flush, and the CPU time per report request (client and server are this one process).

  .venv/bin/python bench/nodeapi/bench_health_flush.py --cvlans 60 --per 5
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cvlan.common.clock import FakeClock  # noqa: E402
from cvlan.controller.nodeapi.handlers import NODEAPI_KEY  # noqa: E402
from cvlan.devtools.harness.enrol import EnrolledNode, make_token, register  # noqa: E402
from cvlan.devtools.harness.inprocess import RunningController  # noqa: E402
from cvlan.devtools.pgcluster import PgCluster  # noqa: E402
from cvlan.wire.pb import node_pb2 as pb  # noqa: E402

ROUNDS = (
    ("first reports (every CVLAN sampled)", pb.PEER_HEALTH_PATH_DIRECT, 60),
    ("all pairs fall back to a relay (events, samples)", pb.PEER_HEALTH_PATH_RELAY, 10),
    ("the same again (nothing due)", pb.PEER_HEALTH_PATH_RELAY, 0),
)


def summary(peers: list[int], path: int) -> pb.HealthSummary:
    entries = [
        pb.PeerHealth(node_id=i, path=path, rtt_us=2500, probes_sent=20, probes_answered=20) for i in peers
    ]
    return pb.HealthSummary(peers_total=len(peers), peers=entries)


async def run(url: str, data: Path, cvlans: int, per: int) -> None:
    clock = FakeClock(dt.datetime.now(dt.UTC))
    rc = await RunningController(data, url, clock=clock, liveness_flush_s=3600).start()
    assert rc.c is not None
    liveness = rc.c.app[NODEAPI_KEY].liveness
    ca = rc.c.ca.cert_pem.decode()
    groups: list[list[EnrolledNode]] = []
    try:
        for c in range(cvlans):
            token = str((await make_token(rc.api().call, "acme", f"c{c}", uses=per))["token"])
            groups.append([await register(rc.url, ca, token, f"n{c}-{i}") for i in range(per)])
        for g in groups:
            for n in g:
                await n.client.poll(0)
        await liveness.flush()
        backend = url.split(":", 1)[0].split("+", 1)[0]
        for label, path, advance in ROUNDS:
            c0 = time.process_time()
            for g in groups:
                for n in g:
                    await n.client.report([], summary([m.node_id for m in g if m is not n], path))
            per_report = (time.process_time() - c0) / (cvlans * per)
            c0 = time.process_time()
            await liveness.flush()
            flush = time.process_time() - c0
            print(
                f"{backend:10s} {cvlans * per} reports, {label}: flush {flush * 1000:.0f} ms CPU, "
                f"{per_report * 1000:.2f} ms CPU per report request"
            )
            clock.advance(advance)
    finally:
        for g in groups:
            for n in g:
                await n.client.close()
        await rc.stop()


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cvlans", type=int, default=60, help="CVLANs (default 60)")
    ap.add_argument("--per", type=int, default=5, help="nodes per CVLAN, 2-64 (default 5)")
    args = ap.parse_args()
    if args.cvlans < 1 or not 2 <= args.per <= 64:
        ap.error("--cvlans must be at least 1 and --per 2-64")
    with tempfile.TemporaryDirectory() as d:
        await run(f"sqlite+aiosqlite:///{Path(d) / 'c.db'}", Path(d) / "s", args.cvlans, args.per)
        cluster = PgCluster(fsync=False).start()
        try:
            await run(cluster.create_db("health_bench"), Path(d) / "p", args.cvlans, args.per)
        finally:
            cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
