"""HAProxy as the TLS front of the node API: it terminates every node's mutual-TLS connection and
forwards requests as plain HTTP over a few reused connections to the controller's proxy socket (a
Unix socket, so no second TLS layer), with the verified client certificate in X-Client-Cert
(URL-escaped PEM, the format the controller reads from a trusted proxy).

Why: Python's ssl holds about 44 KB per idle TLS connection, so 100,000 keep-alive nodes would cost
the controller about 4.4 GB; HAProxy releases idle TLS buffers and keeps a few KB per connection.

This module is the one HAProxy configuration of the project: cvlan-sim runs it, the front memory
benchmark measures it, and docs/NODE-PROTOCOL.md tells operators to print theirs with
`python -m cvlan.sim.front --help`."""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

CONFIG = """\
global
    maxconn {maxconn}
    nbthread {threads}
    # One TLS session per connection this process may hold. Each entry costs about 300 bytes of
    # shared memory that is written at start: 200,000 entries made 63 MB per process before any
    # node connected (880 MB for the 14 processes of a 100,000-node run).
    tune.ssl.cachesize {ssl_cache}
    # HAProxy stops keeping idle backend connections once more than pool-high-fd-ratio % (default
    # 25) of its descriptors are in use; with thousands of node connections that is always, and
    # every request then opens a new connection to the controller. The node
    # connections are the point of the front, so keep the pool until the descriptors run out.
    tune.pool-high-fd-ratio 95
    tune.pool-low-fd-ratio 90
    # maxconn is set from the descriptors a node connection really takes (one), not from HAProxy's
    # own budget of two per connection: start with the open-file limit there is instead of refusing.
    no strict-limits
    ssl-default-bind-options ssl-min-ver TLSv1.2
    ssl-server-verify required

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    # Requests wait for a free backend connection up to the node's own request timeout, instead
    # of being answered 503 after `timeout connect` when the controller is briefly slow.
    timeout queue 30s
    timeout client {client_timeout}s
    timeout http-keep-alive {client_timeout}s
    timeout http-request 30s
    timeout server 60s

frontend nodes
    bind {listen} ssl crt {server_pem}{verify} alpn http/1.1
    maxconn {maxconn}
    # Never trust a client's own X-Client-Cert: only the one set here from the verified handshake.
    http-request del-header X-Client-Cert
    # Only a TLS front that parks long-polls itself may ask the controller not to hold one.
    http-request del-header X-Cvlan-Park
{set_cert}    default_backend controller

backend controller
    server ctl1 unix@{backend} maxconn {backend_conns}
"""

# PEM of the client certificate, URL-escaped like nginx's $ssl_client_escaped_cert.
CERT_FMT = "-----BEGIN%%20CERTIFICATE-----%%0A%[ssl_c_der,base64]%%0A-----END%%20CERTIFICATE-----%%0A"


def render_config(
    listen: str,
    server_pem: Path,
    ca: Path | None,
    backend: Path,
    maxconn: int,
    threads: int = 1,
    backend_conns: int = 64,
    client_timeout: int = 300,
    ssl_cache: int | None = None,
) -> str:
    """haproxy.cfg text. server_pem: certificate and key in one file; ca: the controller CA that
    client certificates are verified against (None: no client certificates, for measurements only);
    backend: the controller's proxy socket; ssl_cache: TLS session cache entries (default maxconn)."""
    verify = f" ca-file {ca} verify optional" if ca is not None else ""
    set_cert = f'    http-request set-header X-Client-Cert "{CERT_FMT}" if {{ ssl_c_used }}\n' if ca else ""
    return CONFIG.format(
        maxconn=maxconn,
        threads=threads,
        listen=listen,
        server_pem=server_pem,
        verify=verify,
        set_cert=set_cert,
        backend=backend,
        backend_conns=backend_conns,
        client_timeout=client_timeout,
        ssl_cache=max(1_000, maxconn) if ssl_cache is None else ssl_cache,
    )


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
    if not found:
        raise RuntimeError(
            "haproxy not found: install the Debian package 'haproxy' (or run with --front none)"
        )
    return found


def write_config(
    work: Path,
    listen: str,
    backend: Path,
    server_crt: Path,
    server_key: Path,
    ca_pem: str,
    maxconn: int,
    threads: int = 1,
    backend_conns: int = 64,
    client_timeout: int = 300,
) -> Path:
    """Write haproxy.cfg (and the PEM files it reads) into work; return the config path."""
    work.mkdir(parents=True, exist_ok=True)
    pem = work / "front-server.pem"
    pem.write_bytes(server_crt.read_bytes() + server_key.read_bytes())
    pem.chmod(0o600)
    ca = work / "front-ca.pem"
    ca.write_text(ca_pem)
    cfg = work / "haproxy.cfg"
    cfg.write_text(render_config(listen, pem, ca, backend, maxconn, threads, backend_conns, client_timeout))
    return cfg


def start(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    """Start HAProxy in the foreground (-db) as a child of the simulator, so it is stopped by pid."""
    binary = haproxy_binary()
    check = subprocess.run([binary, "-c", "-q", "-f", str(cfg)], capture_output=True, timeout=30)
    if check.returncode != 0:
        raise RuntimeError(f"haproxy rejected its config: {check.stderr.decode().strip()[:300]}")
    out = log.open("wb")
    return subprocess.Popen([binary, "-db", "-f", str(cfg)], stdout=out, stderr=subprocess.STDOUT)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m cvlan.sim.front",
        description="Print the HAProxy configuration of a TLS front for the node API: mutual TLS "
        "terminated at HAProxy, requests forwarded over the controller's proxy socket with the verified "
        "certificate in X-Client-Cert (docs/NODE-PROTOCOL.md).",
    )
    p.add_argument("--listen", default=":8443", help="HAProxy's bind address (default :8443)")
    p.add_argument("--pem", type=Path, required=True, help="server certificate and key, in one PEM file")
    p.add_argument("--ca", type=Path, required=True, help="the controller CA (ca.crt in its data dir)")
    p.add_argument("--backend", type=Path, required=True, help="the controller's --proxy-socket")
    p.add_argument("--maxconn", type=int, default=20_000, help="node connections per process (default 20000)")
    p.add_argument("--threads", type=int, default=1, help="HAProxy threads (default 1)")
    args = p.parse_args(argv)
    print(render_config(args.listen, args.pem, args.ca, args.backend, args.maxconn, args.threads), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
