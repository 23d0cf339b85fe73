"""Long-polls through cvlan-front in front of a real controller: memory per waiting node, and the time
from a change to every waiting member answered. Variants, one after the other in one run:

  parked      cvlan-front parks the long-polls itself (the default): the controller answers each at
              once and tells the front which CVLANs changed on one event stream per worker
  held        cvlan-front --no-park with a backend connection per waiting node (--backend-conns N+16):
              the controller holds every long-poll, as before parking -- what it costs when the pool
              is large enough (with the default 16 connections it does not work at all)

N nodes register in CVLANs of --cvlan-size members (0: all in one), each opens its own mutual-TLS
connection through the front and polls once (full map), then all send a 50 s long-poll at once.
Resident memory of the front and the controller is read with every connection idle, then with every
long-poll waiting; the difference per node is what a waiting long-poll costs. Then one more node
joins the first CVLAN (a change to it) and the time from the join's answer to the last of that
CVLAN's waiting members having its new map is taken; the members of other CVLANs must still wait. Plain polling, for comparison,
is not run: a change reaches the last member after up to one poll interval (30 s, +-10 % jitter).

  .venv/bin/python bench/front/bench_front_longpoll.py [--nodes 2000] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import BIN, free_port, machine, start_controller  # noqa: E402
from cvlan.cli.http import Client  # noqa: E402
from cvlan.client import tls  # noqa: E402
from cvlan.client.controller import NodeApiClient  # noqa: E402
from cvlan.wire import nodeproto as wire  # noqa: E402
from cvlan.wire.pb import node_pb2 as pb  # noqa: E402

LONG_POLL_S = 50


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def poll_request(version: int, long_poll_s: int) -> bytes:
    body = pb.PollRequest(
        capability_version=wire.CAPABILITY_VERSION, map_version=version, long_poll_s=long_poll_s
    ).SerializeToString()
    head = f"POST /v1/poll HTTP/1.1\r\nhost: c\r\ncontent-type: {wire.CT_PROTO}\r\ncontent-length: {len(body)}\r\n\r\n"
    return head.encode() + body


async def answer(r: asyncio.StreamReader) -> pb.PollResponse:
    head = await r.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    assert head.startswith(b"HTTP/1.1 200"), head[:100]
    return wire.decode(pb.PollResponse, await r.readexactly(length))


async def register(url: str, ca_pem: str, tokens: list[str], size: int, n: int, tmp: Path) -> list[Path]:
    """n nodes, `size` per token's CVLAN; the path of each one's certificate and key (PEM)."""
    sem = asyncio.Semaphore(16)
    client = NodeApiClient(url, ca_pem)

    async def one(i: int) -> Path:
        key_pem, csr = tls.new_key_and_csr()
        async with sem:
            reg = await client.register(tokens[i // size], os.urandom(32), csr, f"b{i}")
        p = tmp / f"n{i}.pem"
        p.write_text(reg.certificate_pem + key_pem)
        return p

    try:
        return await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        await client.close()


def start_front(tmp: Path, data: Path, sock: Path, *flags: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "cvlan-front"), "--listen", f"127.0.0.1:{port}", "--cert", str(data / "server.crt"),
         "--key", str(data / "server.key"), "--ca", str(data / "ca.crt"), "--backend", str(sock),
         "--workers", "1", "--log-level", "warning", *flags],
    )  # fmt: skip
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("cvlan-front did not listen")


async def variant(
    name: str, ctl: Any, sock: Path, tmp: Path, certs: list[Path], token: str, size: int
) -> dict[str, Any]:
    n = len(certs)
    flags = ["--no-park", "--backend-conns", str(n + 16)] if name == "held" else []
    front, port = start_front(tmp, ctl.data_dir, sock, *flags)
    try:
        await asyncio.sleep(1.0)
        conns = []
        for c in certs:
            ctx = ssl.create_default_context(cadata=ctl.ca_pem)
            ctx.check_hostname = False
            ctx.load_cert_chain(str(c))
            conns.append(await asyncio.open_connection("127.0.0.1", port, ssl=ctx))
        versions = []
        for r, w in conns:
            w.write(poll_request(0, 0))
            versions.append((await answer(r)).map_version)
        await asyncio.sleep(2.0)
        idle = (rss_mb(front.pid), rss_mb(ctl.proc.pid))
        waits = [asyncio.create_task(_long_poll(r, w, v)) for (r, w), v in zip(conns, versions, strict=True)]
        await asyncio.sleep(5.0)  # every long-poll reached the front, and the controller
        assert not any(t.done() for t in waits)
        waiting = (rss_mb(front.pid), rss_mb(ctl.proc.pid))
        client = NodeApiClient(f"https://127.0.0.1:{port}", ctl.ca_pem)
        try:
            _, csr = tls.new_key_and_csr()
            await client.register(token, os.urandom(32), csr, f"joiner-{name}")
        finally:
            await client.close()
        t0 = time.monotonic()
        done = await asyncio.wait_for(asyncio.gather(*waits[:size]), 60)
        times = sorted(t - t0 for t, _ in done)
        assert all(not a.unchanged and a.map_version != versions[0] for _, a in done)
        assert not any(t.done() for t in waits[size:]), "a member of another CVLAN was answered"
        for t in waits[size:]:
            t.cancel()
        for _, w in conns:
            w.close()
        return {
            "variant": name,
            "nodes": n,
            "cvlan_size": size,
            "front_rss_mb": {"idle": idle[0], "waiting": waiting[0]},
            "controller_rss_mb": {"idle": idle[1], "waiting": waiting[1]},
            "front_kb_per_waiting_poll": round((waiting[0] - idle[0]) * 1024 / n, 2),
            "controller_kb_per_waiting_poll": round((waiting[1] - idle[1]) * 1024 / n, 2),
            "change_to_first_ms": round(times[0] * 1000, 1),
            "change_to_median_ms": round(times[len(times) // 2] * 1000, 1),
            "change_to_all_ms": round(times[-1] * 1000, 1),
        }
    finally:
        front.terminate()
        front.wait(15)


async def _long_poll(
    r: asyncio.StreamReader, w: asyncio.StreamWriter, version: int
) -> tuple[float, pb.PollResponse]:
    w.write(poll_request(version, LONG_POLL_S))
    a = await answer(r)
    return time.monotonic(), a


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="cvlan-bench-lp-"))
    sock = tmp / "ctl.sock"
    ctl = start_controller(
        tmp / "data",
        extra_env={"CVLAN_CONTROLLER_PROXY_SOCKET": str(sock), "CVLAN_CONTROLLER_CVLAN_PREFIX": "20"},
    )
    try:
        api = Client(ctl.url, ctl.token, ctl.ca_pem)
        api.call("POST", "/api/v1/tenants", {"name": "bench"})
        size = args.cvlan_size or args.nodes
        tokens = []
        for k in range(-(-args.nodes // size)):
            api.call("POST", "/api/v1/tenants/bench/cvlans", {"name": f"c{k}"})
            tok = api.call("POST", "/api/v1/tenants/bench/tokens", {"cvlan": f"c{k}", "reusable": True})
            tokens.append(str(tok["token"]))
        certs = await register(ctl.url, ctl.ca_pem, tokens, size, args.nodes, tmp)
        out = [await variant(v, ctl, sock, tmp, certs, tokens[0], size) for v in ("parked", "held")]
    finally:
        ctl.stop()
    return {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "machine": machine(), "runs": out}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=2000)
    p.add_argument("--cvlan-size", type=int, default=10, help="members per CVLAN (0: all in one)")
    p.add_argument("--out", type=Path, default=Path("bench/results") / f"front-longpoll-{dt.date.today()}")
    args = p.parse_args()
    res = asyncio.run(main_async(args))
    args.out.mkdir(parents=True, exist_ok=True)
    name = "results.json" if args.cvlan_size else "results-one-cvlan.json"
    (args.out / name).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
