"""Registration burst benchmark: a whole fleet re-enrols at once against one controller on PostgreSQL.

The controller runs pinned to one core (`taskset -c 1`), on an ephemeral PostgreSQL cluster, with
its proxy socket (the plain-HTTP Unix socket a TLS front forwards to, served by the lean node API
server). This load generator, pinned to the other core, keeps `--concurrency` registrations in
flight over as many keep-alive connections to that socket: token + CSR + WireGuard key, as
`cvlan-ctrl` sends them. Measured: registrations/s (wall), the controller's CPU per registration
(from its own user + system time), latency p50/p99, errors.

`--src DIR` runs the controller from another source tree (an older commit exported with
`git archive`), so that the old and the new code are measured alternately in one session:

  .venv/bin/python bench/registration/bench_registration.py --nodes 10000 --json out.json
  .venv/bin/python bench/registration/compare.py --old-src /tmp/old/src --rounds 3 --nodes 10000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import psutil  # noqa: E402

from bench.common import BIN, ProxyConn, machine, pct, start_proxied  # noqa: E402
from cvlan.client import tls  # noqa: E402
from cvlan.devtools.pgcluster import PgCluster  # noqa: E402
from cvlan.wire import nodeproto as wire  # noqa: E402


def provision(cluster: PgCluster, dbname: str, nodes: int, per_cvlan: int) -> list[str]:
    """One tenant, one CVLAN per `per_cvlan` nodes, one token per CVLAN: written straight into the
    database in one transaction (the management API would take longer than the burst itself)."""
    import hashlib
    import secrets

    n_cvlans = (nodes + per_cvlan - 1) // per_cvlan
    tokens, sql = (
        [],
        ["BEGIN;", "INSERT INTO tenants (name, display_name, created_at) VALUES ('bench', '', now());"],
    )
    for i in range(n_cvlans):
        start = (10 << 24) + (64 << 16) + i * 256  # 10.64.0.0/24, 10.64.1.0/24, ...
        subnet = f"10.{64 + (i >> 8)}.{i & 255}.0/24"
        prefix, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        tokens.append(f"cvet_{prefix}_{secret}")
        digest = hashlib.sha256(secret.encode()).hexdigest()
        sql.append(
            "INSERT INTO cvlans (tenant_id, name, subnet, net_start, net_end, mode, version, created_at) "
            f"SELECT id, 'c{i}', '{subnet}', {start}, {start + 255}, 'mesh', 1, now() FROM tenants "
            "WHERE name = 'bench';"
        )
        sql.append(
            "INSERT INTO enrollment_tokens (tenant_id, cvlan_id, prefix, secret_hash, reusable, tags, uses, "
            f"max_uses, created_by, created_at) SELECT c.tenant_id, c.id, '{prefix}', '\\x{digest}'::bytea, "
            f"false, '[]', 0, {per_cvlan}, 'bench', now() FROM cvlans c WHERE c.name = 'c{i}';"
        )
    sql.append("COMMIT;")
    path = Path(tempfile.mkstemp(suffix=".sql")[1])
    path.write_text("\n".join(sql))
    path.chmod(0o644)
    try:
        subprocess.run(
            cluster._as_user(
                [str(cluster.bindir / "psql"), "-q", "-v", "ON_ERROR_STOP=1", "-h", str(cluster.sock),
                 "-d", dbname, "-f", str(path)]
            ),
            check=True, capture_output=True, timeout=300,
        )  # fmt: skip
    finally:
        path.unlink()
    return tokens


async def burst(
    sock: Path, tokens: list[str], per_cvlan: int, nodes: int, conc: int, pid: int
) -> dict[str, Any]:
    _, csr = tls.new_key_and_csr()
    todo = [(tokens[i // per_cvlan], i) for i in range(nodes)]
    random.Random(nodes).shuffle(todo)  # joins come from many CVLANs at once
    lat: list[float] = []
    errors: dict[int, int] = {}
    loop = asyncio.get_running_loop()

    async def worker() -> None:
        _, c = await loop.create_unix_connection(ProxyConn, str(sock))
        while todo:
            tok, i = todo.pop()
            req = wire.register_request(tok, os.urandom(32), csr, f"host-{i}", "linux bench")
            body = req.SerializeToString()
            t = time.perf_counter()
            status, _ = await c.post("/v1/register", body)
            if status == 200:
                lat.append(time.perf_counter() - t)
            else:
                errors[status] = errors.get(status, 0) + 1
        c.close()

    p = psutil.Process(pid)
    c0 = p.cpu_times()
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    wall = time.perf_counter() - t0
    c1 = p.cpu_times()
    cpu = (c1.user + c1.system) - (c0.user + c0.system)
    ok = len(lat)
    return {
        "nodes": nodes, "ok": ok, "errors": errors, "wall_s": wall, "per_s": ok / wall,
        "cpu_s": cpu, "cpu_ms_per_reg": cpu / max(ok, 1) * 1e3, "cpu_bound_per_s": ok / cpu if cpu else 0.0,
        "p50_ms": pct(lat, 50) * 1e3, "p99_ms": pct(lat, 99) * 1e3, "max_ms": max(lat, default=0) * 1e3,
        "concurrency": conc, "per_cvlan": per_cvlan,
    }  # fmt: skip


def profiler(out: str | None, pid: int) -> subprocess.Popen[bytes] | None:
    """py-spy sampling the controller (collapsed stacks, with native frames) while the burst runs."""
    if not out:
        return None
    cmd = [str(BIN / "py-spy"), "record", "--pid", str(pid), "--format", "raw", "--rate", "250",
           "--nonblocking", "--output", out]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="cvlan-regbench-") as tmp, PgCluster() as cluster:
        db = cluster.create_db("bench")
        data, sock = Path(tmp) / "data", Path(tmp) / "proxy.sock"
        ctl = start_proxied(data, sock, args.src, db=db)
        pid = ctl.proc.pid
        try:
            tokens = provision(cluster, "bench", args.nodes, args.per_cvlan)
            time.sleep(1)
            spy = profiler(args.py_spy, pid)
            res = asyncio.run(burst(sock, tokens, args.per_cvlan, args.nodes, args.concurrency, pid))
            if spy is not None:
                spy.send_signal(2)
                spy.wait(60)
        finally:
            ctl.stop(grace=30)
    res["src"] = args.src or "this tree"
    res["machine"] = machine()
    res["load_1m"] = os.getloadavg()[0]
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=10_000, help="registrations in the burst")
    ap.add_argument("--per-cvlan", type=int, default=10, help="nodes per CVLAN (the simulator's fleet shape)")
    ap.add_argument("--concurrency", type=int, default=64, help="registrations in flight")
    ap.add_argument("--src", help="run the controller from this source tree (PYTHONPATH)")
    ap.add_argument("--py-spy", metavar="FILE", help="profile the controller with py-spy (collapsed stacks)")
    ap.add_argument("--json", help="write the result here")
    args = ap.parse_args()
    os.sched_setaffinity(0, {0})
    res = run(args)
    print(json.dumps(res, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0 if res["ok"] == args.nodes else 1


if __name__ == "__main__":
    sys.exit(main())
