"""Memory per idle node connection at the TLS terminator: HAProxy (the front of large installations)
against Python's own ssl (the controller terminating TLS itself), side by side in one run.

Each server holds N idle keep-alive TLS connections that each made one request, as a node's
connection does between polls. Resident memory is read at steps of connections and the cost per
connection is the fitted slope, so start-up memory does not count. Variants:

  haproxy-mtls       HAProxy as configured by cvlan-sim and the operations guide: client certificate
                     requested and verified; every node presents a certificate issued by the
                     controller's CA for its Ed25519 key (what cvlan-ctrl and cvlan-sim make)
  haproxy-mtls-p256  the same with a P-256 node key (what nodes made before)
  haproxy-tls        without client certificates (what verification costs)
  haproxy-nocache    mTLS with the TLS session cache off (what the cache costs per connection)
  nginx-mtls         nginx as the front instead, same certificates and header (where installed)
  cvlan-front        cvlan-front (one worker): OpenSSL does the handshake, then the connection keeps
                     only its TLS 1.3 traffic keys and the node's certificate
  python-mtls        a server on Python's ssl and uvloop, as the controller runs when it terminates
                     TLS itself, with the same certificates (no HTTP stack, so the TLS cost alone;
                     the controller's per-connection objects come on top)

The allocator variants (jemalloc, mimalloc, tcmalloc via LD_PRELOAD) run only where the library is
installed.

  .venv/bin/python bench/front/bench_front_memory.py [--conns 6000] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import resource
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cryptography.hazmat.primitives import serialization  # noqa: E402

from bench.common import free_port, machine  # noqa: E402
from cvlan.common.pki import KeyType, new_csr  # noqa: E402
from cvlan.controller.ca import CertificateAuthority  # noqa: E402
from cvlan.sim import front  # noqa: E402
from cvlan.wire import certid  # noqa: E402

ALLOCATORS = {
    "jemalloc": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "mimalloc": "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2",
    "tcmalloc": "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
}
ANSWER = (
    b"HTTP/1.1 200 OK\r\ncontent-length: 300\r\ncontent-type: application/x-protobuf\r\n\r\n" + b"m" * 300
)
REQUEST = b"POST /v1/poll HTTP/1.1\r\nhost: controller\r\ncontent-length: 0\r\n\r\n"
HANDSHAKES_IN_FLIGHT = 100


# --- certificates: the controller's own CA, its server certificate and one node certificate as
# registration issues it (the same for every connection: the server keeps one parsed copy per
# connection either way) ------------------------------------------------------------------------------


def make_pki(d: Path, node_key: KeyType = "p256") -> None:
    """ca.pem, server.pem (chain and key) and node.pem (certificate and key) in d, issued by a fresh
    controller CA; node_key is the node's key type (p256 or ed25519)."""
    ca = CertificateAuthority.load_or_create(d / "ca")
    cp, kp = ca.issue_server(["127.0.0.1", "controller.example"], d / "ca")
    (d / "ca.pem").write_bytes(ca.cert_pem)
    (d / "server.pem").write_bytes(cp.read_bytes() + kp.read_bytes())
    key_pem, csr = new_csr("bench-node", node_key)  # as cvlan-ctrl makes them
    cert = ca.issue_client(
        csr.encode(),
        common_name="node-48213",
        lifetime=dt.timedelta(days=7),
        identity={
            certid.OID_NODE_ID: "48213",
            certid.OID_TENANT_ID: "57",
            certid.OID_CVLAN_ID: "5612",
            certid.OID_WG_KEY: os.urandom(32).hex(),
        },
    )
    (d / "node.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key_pem)
    for f in ("server.pem", "node.pem"):
        (d / f).chmod(0o600)


# --- servers ----------------------------------------------------------------------------------------

NGINX_CFG = """\
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile {nofile};
pid {d}/nginx.pid;
error_log {d}/{variant}.error.log warn;
events {{ worker_connections {maxconn}; }}
http {{
    access_log off;
    client_body_temp_path {d}/nginx-body;
    proxy_temp_path {d}/nginx-proxy;
    fastcgi_temp_path {d}/nginx-fastcgi;
    uwsgi_temp_path {d}/nginx-uwsgi;
    scgi_temp_path {d}/nginx-scgi;
    keepalive_timeout 300s;
    keepalive_requests 1000000;
    upstream controller {{ server unix:{d}/backend.sock; keepalive 8; }}
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {d}/server.pem;
        ssl_certificate_key {d}/server.pem;
        ssl_client_certificate {d}/ca.pem;
        ssl_verify_client on;
        location / {{
            proxy_pass http://controller;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Client-Cert $ssl_client_escaped_cert;
        }}
    }}
}}
"""

PYTHON_SERVER = """
import asyncio, ssl, sys
import uvloop
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=sys.argv[2] + "/ca.pem")
ctx.load_cert_chain(sys.argv[2] + "/server.pem")
ctx.verify_mode = ssl.CERT_REQUIRED
ANSWER = bytes.fromhex(sys.argv[3])
class P(asyncio.Protocol):
    def connection_made(self, t): self.t = t
    def data_received(self, data):
        if data.endswith(b"\\r\\n\\r\\n"): self.t.write(ANSWER)
async def main():
    srv = await asyncio.get_running_loop().create_server(P, "127.0.0.1", int(sys.argv[1]), ssl=ctx, backlog=1024)
    print("ready", flush=True)
    await srv.serve_forever()
uvloop.run(main())
"""


class Backend(asyncio.Protocol):
    """The controller's place behind HAProxy: answers each request at once."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t: Any = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            self.buf = self.buf[end + 4 :]
            self.t.write(ANSWER)


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


async def hold(port: int, d: Path, n: int, conns: list[Any], client_cert: bool) -> None:
    ctx = ssl.create_default_context(cafile=str(d / "ca.pem"))
    ctx.check_hostname = False
    if client_cert:
        ctx.load_cert_chain(str(d / "node.pem"))
    sem = asyncio.Semaphore(HANDSHAKES_IN_FLIGHT)

    async def one() -> None:
        async with sem:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=ctx), 30)
            w.write(REQUEST)
            await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30)
            await asyncio.wait_for(r.readexactly(300), 30)
            conns.append(w)

    await asyncio.gather(*(one() for _ in range(n)))


async def measure(variant: str, d: Path, steps: list[int], env_extra: dict[str, str]) -> dict[str, Any]:
    port = free_port()
    mtls = variant != "haproxy-tls"
    log = open(d / f"{variant}.log", "wb")
    backend = None
    if variant == "cvlan-front":
        sock = d / "backend.sock"
        sock.unlink(missing_ok=True)
        backend = await asyncio.get_running_loop().create_unix_server(Backend, str(sock))
        pem = str(d / "server.pem")  # chain and key in one file
        cmd = [sys.executable, "-m", "cvlan.front", "--listen", f"127.0.0.1:{port}", "--cert", pem,
               "--key", pem, "--ca", str(d / "ca.pem"), "--backend", str(sock), "--log-level", "warning",
               "--max-uncertified-per-addr", str(HANDSHAKES_IN_FLIGHT)]  # fmt: skip
        # (every handshake comes from 127.0.0.1: the per-address limit must let them all in)
        proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        await asyncio.sleep(2.0)
        if proc.poll() is not None:
            raise RuntimeError(f"{variant}: exited; see {variant}.log")
    elif variant.startswith("python"):
        script = d / "server.py"
        script.write_text(PYTHON_SERVER)
        proc = subprocess.Popen(
            [sys.executable, str(script), str(port), str(d), ANSWER.hex()], stdout=subprocess.PIPE, stderr=log
        )
        assert proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
        if line.strip() != b"ready":
            raise RuntimeError(f"{variant}: server did not start")
    else:  # a proxy in front of the controller's place on a unix socket
        sock = d / "backend.sock"
        sock.unlink(missing_ok=True)
        backend = await asyncio.get_running_loop().create_unix_server(Backend, str(sock))
        cfg = d / f"{variant}.cfg"
        if variant.startswith("nginx"):
            text = NGINX_CFG.format(
                nofile=max(steps) * 2 + 1000, maxconn=max(steps) + 1000, d=d, variant=variant, port=port
            )
            cmd = ["nginx", "-c", str(cfg), "-p", str(d)]
        else:
            text = front.render_config(
                f"127.0.0.1:{port}",
                d / "server.pem",
                d / "ca.pem" if mtls else None,
                d / "backend.sock",
                maxconn=max(steps) + 1000,
                backend_conns=8,
                ssl_cache=0 if variant.startswith("haproxy-nocache") else max(steps) + 1000,
            )
            cmd = ["haproxy", "-db", "-f", str(cfg)]
        cfg.write_text(text)
        proc = subprocess.Popen(cmd, env={**os.environ, **env_extra}, stdout=log, stderr=log)
        await asyncio.sleep(1.0)
        if proc.poll() is not None:
            raise RuntimeError(f"{variant}: {cmd[0]} exited; see {variant}.log")
    conns: list[Any] = []
    points: list[tuple[int, int]] = []
    try:
        await asyncio.sleep(0.5)
        points.append((0, rss_kb(proc.pid)))
        for target in steps:
            await hold(port, d, target - len(conns), conns, mtls)
            await asyncio.sleep(1.0)
            points.append((len(conns), rss_kb(proc.pid)))
    finally:
        for w in conns:
            w.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        if backend is not None:
            backend.close()
        log.close()
    xs, ys = [p[0] for p in points[1:]], [p[1] for p in points[1:]]
    slope = statistics.linear_regression(xs, ys).slope if len(xs) > 1 else (ys[0] - points[0][1]) / xs[0]
    return {"variant": variant, "points": points, "kb_per_conn": slope, "start_mb": points[0][1] / 1024}


def _front_openssl() -> str:
    from OpenSSL import SSL

    return SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()


def _nginx_version() -> str:
    out = subprocess.run(["nginx", "-v"], capture_output=True, text=True)
    return (out.stderr or out.stdout).strip().removeprefix("nginx version: ")


def report(out: Path, results: list[dict[str, Any]], conns: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    names = [r["variant"] for r in results]
    vals = [r["kb_per_conn"] for r in results]
    colours = {"haproxy": "C0", "nginx": "C2", "python": "C3", "cvlan": "C1"}
    ax.barh(names, vals, color=[colours[n.split("-")[0]] for n in names])
    for i, v in enumerate(vals):
        ax.text(v, i, f" {v:.1f} KB", va="center", fontsize=8)
    ax.set_xlabel("resident memory per idle keep-alive connection (KB)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(out / "per-connection.png", dpi=110)
    plt.close(fig)
    by = {r["variant"]: r for r in results}
    mtls = by["haproxy-mtls"]["kb_per_conn"]
    lines = [
        "# Memory per idle node connection at the TLS terminator",
        "",
        f"{conns:,} idle keep-alive TLS connections per server, each after one request (a node between "
        "polls); resident memory read at steps and fitted, so start-up memory is not counted. "
        "All variants in one run on the same machine.",
        "",
        "| variant | KB per connection | ratio to haproxy-mtls | RSS at start (MB) |",
        "|---|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['variant']} | {r['kb_per_conn']:.1f} | {r['kb_per_conn'] / mtls:.2f} | {r['start_mb']:.1f} |"
        )
    at100k = (mtls * 100_000) / 2**20
    lines += [
        "",
        "![per connection](per-connection.png)",
        "",
        "## What it means at 100,000 nodes",
        "",
        f"* The HAProxy front as deployed holds about {at100k:.2f} GB for 100,000 idle node connections "
        f"({mtls:.1f} KB each), before its per-process start-up memory.",
    ]
    if "python-mtls" in by:
        py = by["python-mtls"]["kb_per_conn"]
        lines.append(
            f"* Python's ssl on uvloop holds {py:.1f} KB per connection ({py / mtls:.2f} x HAProxy), "
            f"{py * 100_000 / 2**20:.2f} GB at 100,000 nodes for TLS alone, in the controller's one "
            "process; the controller's own objects per connection come on top, and one process's "
            "open-file limit caps the connections it can hold."
        )
    if "cvlan-front" in by:
        cf = by["cvlan-front"]
        kb = cf["kb_per_conn"]
        lines.append(
            f"* cvlan-front holds {kb:.1f} KB per connection ({kb / mtls:.2f} x HAProxy), "
            f"{kb * 100_000 / 2**20:.2f} GB at 100,000 nodes, plus about {cf['start_mb']:.0f} MB per "
            "worker process at start (a Python interpreter): after the handshake it frees OpenSSL's "
            "connection object and keeps the TLS 1.3 traffic keys and the node's certificate (DER)."
        )
    if "haproxy-mtls-p256" in by:
        p256 = by["haproxy-mtls-p256"]["kb_per_conn"]
        lines.append(
            f"* A node certificate for an Ed25519 key costs the front {p256 - mtls:.1f} KB less per "
            f"connection than one for a P-256 key ({mtls:.1f} against {p256:.1f} KB): "
            f"{(p256 - mtls) * 100_000 / 1024:,.0f} MB at 100,000 nodes. cvlan-ctrl and "
            "cvlan-sim make Ed25519 keys."
        )
    if "nginx-mtls" in by:
        ng = by["nginx-mtls"]["kb_per_conn"]
        lines.append(
            f"* nginx with the same certificates holds {ng:.1f} KB per connection ({ng / mtls:.2f} x "
            "HAProxy): both keep OpenSSL's per-connection state, which is most of it."
        )
    if "haproxy-tls" in by:
        t = by["haproxy-tls"]["kb_per_conn"]
        lines.append(
            f"* Verifying a client certificate costs {mtls - t:.1f} KB per connection: the server "
            "keeps the node's parsed certificate for the life of the connection."
        )
    if "haproxy-nocache" in by:
        lines.append(
            f"* The TLS session cache changes the cost per connection by "
            f"{mtls - by['haproxy-nocache']['kb_per_conn']:+.1f} KB (its entries are allocated at start "
            "and counted in the start-up memory)."
        )
    allocs = [r for r in results if r["variant"].removeprefix("haproxy-mtls-") in ALLOCATORS]
    if allocs:
        lines.append(
            "* Other allocators: "
            + ", ".join(f"{r['variant'].split('-')[-1]} {r['kb_per_conn']:.1f} KB" for r in allocs)
            + ": the memory is live TLS state, not fragmentation."
        )
    lines += [
        "",
        "## Configuration and machine",
        "",
        f"* Machine: {machine()}.",
        f"* HAProxy: {subprocess.run(['haproxy', '-v'], capture_output=True, text=True).stdout.splitlines()[0]}; "
        f"{ssl.OPENSSL_VERSION} (Python's ssl)" + (f"; {_nginx_version()}." if "nginx-mtls" in by else "."),
        f"* cvlan-front: handshakes in {_front_openssl()}; the record layer in Python with the "
        "cryptography package's AEADs.",
        "* Certificates: issued by the controller's own CA (ECDSA P-256) as registration issues them, "
        "with the identity extensions; node keys Ed25519 unless the variant says P-256; TLS 1.3 "
        "negotiated.",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    (out / "results.json").write_text(json.dumps({"conns": conns, "results": results}, indent=1))


async def main_async(args: argparse.Namespace) -> None:
    if not shutil.which("haproxy"):
        raise SystemExit("bench_front_memory: haproxy is not installed (make deps installs it)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * args.conns + 1000
    if hard < need:
        raise SystemExit(f"bench_front_memory: the open-file limit is {hard}; {need} are needed for --conns")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))
    steps = [args.conns // 3, 2 * args.conns // 3, args.conns]
    variants: list[tuple[str, dict[str, str]]] = [
        ("haproxy-mtls", {}),
        ("haproxy-mtls-p256", {}),
        ("haproxy-tls", {}),
        ("haproxy-nocache", {}),
        ("python-mtls", {}),
    ]
    if shutil.which("nginx"):
        variants.insert(4, ("nginx-mtls", {}))
    variants.insert(-1, ("cvlan-front", {}))
    variants += [(f"haproxy-mtls-{n}", {"LD_PRELOAD": p}) for n, p in ALLOCATORS.items() if Path(p).exists()]
    results = []
    with tempfile.TemporaryDirectory(prefix="cvlan-front-bench-") as tmp:
        key_types: tuple[KeyType, ...] = ("ed25519", "p256")
        pki = {k: Path(tmp, k) for k in key_types}
        for k in key_types:
            pki[k].mkdir()
            make_pki(pki[k], k)
        for name, env in variants:
            t = time.monotonic()
            r = await measure(name, pki["p256" if name.endswith("p256") else "ed25519"], steps, env)
            results.append(r)
            print(
                f"{name:24s} {r['kb_per_conn']:6.1f} KB/conn  start {r['start_mb']:5.1f} MB  "
                f"({time.monotonic() - t:.0f} s)",
                flush=True,
            )
    args.out.mkdir(parents=True, exist_ok=True)
    report(args.out, results, args.conns)
    print(f"report: {args.out / 'report.md'}")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--conns", type=int, default=6000, help="idle connections per server (default 6000)")
    ap.add_argument(
        "--out",
        type=Path,
        default=Path(f"bench/results/front-memory-{dt.date.today().isoformat()}"),
        help="report directory (default bench/results/front-memory-DATE)",
    )
    args = ap.parse_args()
    if args.conns < 30:
        ap.error("--conns must be at least 30")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
