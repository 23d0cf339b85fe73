"""cvlan-front with real TLS clients: Python's ssl (what nodes use) and `openssl s_client`.

The front runs as its own process, with certificates from the controller's CA, in front of a
stand-in for the controller's proxy socket that records every request it is sent. (The whole path
with a real controller, PostgreSQL and 1,000 nodes is the simulator smoke test with --front cvlan.)"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cvlan.common.pki import new_csr
from cvlan.controller.ca import CertificateAuthority
from cvlan.wire import certid

FRONT = [sys.executable, "-m", "cvlan.front"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _node_cert(ca: CertificateAuthority, d: Path, name: str) -> Path:
    key_pem, csr = new_csr(name, "ed25519")
    ident = {certid.OID_NODE_ID: "7", certid.OID_TENANT_ID: "1", certid.OID_CVLAN_ID: "1"}
    cert = ca.issue_client(csr.encode(), common_name=name, lifetime=dt.timedelta(days=1), identity=ident)
    path = d / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key_pem)
    path.chmod(0o600)
    return path


class Backend:
    """The controller's place: a Unix socket server that records each request and answers it with a
    body as long as the request asks for in its X-Answer-Bytes header (default 5)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.requests: list[bytes] = []
        self.transports: list[asyncio.Transport] = []
        self.loop = asyncio.new_event_loop()
        self.server: asyncio.base_events.Server | None = None
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(self.loop.create_unix_server(self._proto, str(self.path)))
        ready.set()
        self.loop.run_forever()

    def _proto(self) -> asyncio.Protocol:
        backend = self

        class P(asyncio.Protocol):
            buf = b""

            def connection_made(self, t: asyncio.BaseTransport) -> None:
                self.t: asyncio.Transport = t  # type: ignore[assignment]
                backend.transports.append(self.t)

            def data_received(self, data: bytes) -> None:
                self.buf += data
                while (end := self.buf.find(b"\r\n\r\n")) >= 0:
                    head = self.buf[:end].decode("latin-1")
                    headers = dict(
                        (k.strip().lower(), v.strip())
                        for k, _, v in (line.partition(":") for line in head.split("\r\n")[1:])
                    )
                    length = int(headers.get("content-length", "0"))
                    if len(self.buf) < end + 4 + length:
                        return
                    backend.requests.append(self.buf[: end + 4 + length])
                    self.buf = self.buf[end + 4 + length :]
                    body = b"a" * int(headers.get("x-answer-bytes", "5"))
                    self.t.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body)

        return P()

    def close(self) -> None:
        """Stop, as a controller that exits: the listener and every connection close."""
        if not self.thread.is_alive():
            return

        def stop() -> None:
            assert self.server is not None
            self.server.close()
            for t in self.transports:
                t.close()
            self.loop.call_later(0.2, self.loop.stop)  # after the closes it scheduled

        self.loop.call_soon_threadsafe(stop)
        self.thread.join(10)


class Running:
    def __init__(
        self, d: Path, ca: CertificateAuthority, port: int, backend: Backend, proc: subprocess.Popen[bytes]
    ):
        self.d, self.ca, self.port, self.backend, self.proc = d, ca, port, backend, proc

    def client(self, cert: Path | None, tls12: bool = False) -> ssl.SSLSocket:
        ctx = ssl.create_default_context(cafile=str(self.d / "ca.pem"))
        ctx.check_hostname = False
        if tls12:
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        if cert is not None:
            ctx.load_cert_chain(str(cert))
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        return ctx.wrap_socket(raw, suppress_ragged_eofs=False)  # an EOF without close_notify raises


def _start(d: Path, backend_path: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    proc = subprocess.Popen(
        [*FRONT, "--listen", f"127.0.0.1:{port}", "--cert", str(d / "server.crt"), "--key",
         str(d / "server.key"), "--ca", str(d / "ca.pem"), "--backend", str(backend_path), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0].decode()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("cvlan-front did not listen within 20 s")


@pytest.fixture
def front(tmp_path: Path) -> Iterator[Running]:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    crt, key = ca.issue_server(["127.0.0.1"], tmp_path / "ca")
    shutil.copy(crt, tmp_path / "server.crt")
    shutil.copy(key, tmp_path / "server.key")
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    backend = Backend(tmp_path / "backend.sock")
    proc, port = _start(tmp_path, backend.path, "--idle-timeout", "2", "--request-timeout", "1")
    try:
        yield Running(tmp_path, ca, port, backend, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        backend.close()


def _request(s: ssl.SSLSocket, head: str | bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send a request (a str head's lines end in CRLF; a bytes head is sent as it is)."""
    raw = head if isinstance(head, bytes) else head.replace("\n", "\r\n").encode() + b"\r\n"
    s.sendall(raw + body)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        assert chunk, f"connection closed before a response: {buf!r}"
        buf += chunk
    head_bytes, _, rest = buf.partition(b"\r\n\r\n")
    lines = head_bytes.decode().split("\r\n")
    length = next(
        int(v) for k, _, v in (x.partition(":") for x in lines[1:]) if k.lower() == "content-length"
    )
    while len(rest) < length:
        chunk = s.recv(65536)
        assert chunk
        rest += chunk
    return int(lines[0].split()[1]), rest


def _forwarded_cert(request: bytes) -> x509.Certificate | None:
    values = [
        line.split(b":", 1)[1].strip()
        for line in request.split(b"\r\n\r\n")[0].split(b"\r\n")
        if line.lower().startswith(b"x-client-cert:")
    ]
    assert len(values) <= 1
    return (
        x509.load_pem_x509_certificate(urllib.parse.unquote(values[0].decode()).encode()) if values else None
    )


def test_requests_carry_the_verified_node_certificate(front: Running) -> None:
    cert_path = _node_cert(front.ca, front.d, "node-1")
    mine = x509.load_pem_x509_certificate(cert_path.read_bytes())
    with front.client(cert_path) as s:
        assert s.version() == "TLSv1.3"
        # several requests on one connection, a body and an answer spanning many records
        assert _request(s, "POST /v1/poll HTTP/1.1\nhost: c\ncontent-length: 3\n", b"abc") == (200, b"aaaaa")
        big = os.urandom(60_000)  # four records; the node API takes up to 64 KB
        status, body = _request(
            s, f"POST /v1/report HTTP/1.1\nhost: c\nx-answer-bytes: 70000\ncontent-length: {len(big)}\n", big
        )
        assert (status, body) == (200, b"a" * 70000)
        assert _request(s, "GET /v1/discover HTTP/1.1\nhost: c\n")[0] == 200
    reqs = front.backend.requests
    assert len(reqs) == 3
    assert reqs[0].endswith(b"\r\n\r\nabc") and reqs[1].endswith(big)
    for r in reqs:
        assert _forwarded_cert(r) == mine


def test_a_header_the_client_made_up_is_not_forwarded(front: Running) -> None:
    forged = "X-Client-Cert: -----BEGIN%20CERTIFICATE-----%0AMIIforged%0A-----END%20CERTIFICATE-----%0A"
    with front.client(None) as s:  # registration comes without a certificate
        assert _request(s, f"POST /v1/register HTTP/1.1\nhost: c\n{forged}\ncontent-length: 0\n")[0] == 200
    cert_path = _node_cert(front.ca, front.d, "node-2")
    with front.client(cert_path) as s:
        assert _request(s, f"POST /v1/poll HTTP/1.1\nhost: c\n{forged}\ncontent-length: 0\n")[0] == 200
    without, with_cert = front.backend.requests
    assert _forwarded_cert(without) is None
    assert _forwarded_cert(with_cert) == x509.load_pem_x509_certificate(cert_path.read_bytes())


def test_certificate_of_another_ca_and_tls12_are_refused(front: Running, tmp_path: Path) -> None:
    other = CertificateAuthority.load_or_create(tmp_path / "other-ca")
    stranger = _node_cert(other, tmp_path, "stranger")
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        with front.client(stranger) as s:
            # TLS 1.3: the client learns of the refusal on its first read
            _request(s, "POST /v1/poll HTTP/1.1\nhost: c\ncontent-length: 0\n")
    with pytest.raises(ssl.SSLError):
        front.client(None, tls12=True)
    assert front.backend.requests == []


@pytest.mark.parametrize(
    "suite", ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"]
)
def test_key_update_from_the_client(front: Running, suite: str) -> None:
    """openssl s_client's K command sends a KeyUpdate that asks for ours: both directions change
    keys, and a request after it is still answered; with each TLS 1.3 cipher suite."""
    if not shutil.which("openssl"):
        pytest.skip("openssl command not installed")
    cert_path = _node_cert(front.ca, front.d, "node-3")
    proc = subprocess.Popen(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{front.port}", "-cert", str(cert_path),
         "-CAfile", str(front.d / "ca.pem"), "-crlf", "-tls1_3", "-ciphersuites", suite],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    try:
        time.sleep(1.0)
        for line in ("K", "K"):
            proc.stdin.write(line.encode() + b"\n")
            proc.stdin.flush()
            time.sleep(0.3)
        proc.stdin.write(b"GET /v1/discover HTTP/1.1\nhost: c\nx-answer-bytes: 9\n\n")
        proc.stdin.flush()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(front.backend.requests) < 1:
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        out = proc.communicate(timeout=10)[0].decode(errors="replace")  # closes stdin: s_client ends
    assert out.count("KEYUPDATE") == 2, out[-2000:]
    assert f"Cipher is {suite}" in out, out[-2000:]
    assert "HTTP/1.1 200 OK" in out and "aaaaaaaaa" in out, out[-2000:]
    assert len(front.backend.requests) == 1


def test_idle_connection_closed_and_backend_down_answered(front: Running) -> None:
    cert_path = _node_cert(front.ca, front.d, "node-4")
    with front.client(cert_path) as s:
        assert _request(s, "POST /v1/poll HTTP/1.1\nhost: c\ncontent-length: 0\n")[0] == 200
        s.settimeout(10)
        t = time.monotonic()
        assert s.recv(100) == b""  # close_notify after --idle-timeout 2
        assert time.monotonic() - t < 6
    front.backend.close()
    front.backend.path.unlink()
    with front.client(cert_path) as s:
        status, body = _request(s, "POST /v1/poll HTTP/1.1\nhost: c\ncontent-length: 0\n")
    assert status == 502 and b"controller did not answer" in body


def test_bad_requests_get_clear_errors(front: Running) -> None:
    cert_path = _node_cert(front.ca, front.d, "node-5")
    cases: list[tuple[str | bytes, int]] = [
        ("POST /v1/poll HTTP/1.1\nhost: c\ntransfer-encoding: chunked\n", 411),
        ("POST /v1/poll HTTP/1.1\nhost: c\ncontent-length: 99999999\n", 413),
        ("nonsense\n", 400),
        # what a parser behind could read differently: each would smuggle a header past the front
        ("POST /v1/poll HTTP/1.1\nhost: c\ncontent-length: 0\ncontent-length: 5\n", 400),
        (
            b"POST /v1/poll HTTP/1.1\r\nhost: c\r\nx-a: 1\nX-Client-Cert: forged\r\n"
            b"content-length: 0\r\n\r\n",
            400,
        ),
        ("POST /v1/poll HTTP/1.1\nhost: c\nX-Client-Cert : forged\ncontent-length: 0\n", 400),
        ("POST /v1/poll HTTP/1.1\nhost: c\nx-a: 1\n X-Client-Cert: folded\ncontent-length: 0\n", 400),
    ]
    for head, status in cases:
        with front.client(cert_path) as s:
            assert _request(s, head)[0] == status
    with front.client(cert_path) as s:  # a request that never ends: refused after --request-timeout 1
        s.sendall(b"POST /v1/poll HTTP/1.1\r\nhost: c\r\ncontent-length: 10\r\n\r\nabc")
        status, body = _request(s, b"")
        assert status == 408 and b"did not arrive in time" in body
    assert front.backend.requests == []


def test_command_line_errors(tmp_path: Path) -> None:
    out = subprocess.run([*FRONT, "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "--backend" in out.stdout and "X-Client-Cert" in out.stdout
    args = ["--listen", "127.0.0.1:1", "--cert", str(tmp_path / "none.crt"), "--key", "k", "--ca", "c"]
    out = subprocess.run([*FRONT, *args, "--backend", "b"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "none.crt: no such file" in out.stderr
    args[1] = "nowhere"
    out = subprocess.run([*FRONT, *args, "--backend", "b"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "HOST:PORT" in out.stderr


def test_sigterm_stops_every_worker_and_closes_connections(tmp_path: Path) -> None:
    """With --workers 2 the parent forwards SIGTERM: each worker sends close_notify on its open
    connections and exits, and the parent exits 0."""
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    crt, key = ca.issue_server(["127.0.0.1"], tmp_path / "ca")
    shutil.copy(crt, tmp_path / "server.crt")
    shutil.copy(key, tmp_path / "server.key")
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    backend = Backend(tmp_path / "backend.sock")
    proc, port = _start(tmp_path, backend.path, "--workers", "2")
    try:
        front = Running(tmp_path, ca, port, backend, proc)
        cert_path = _node_cert(ca, tmp_path, "node-6")
        clients = [front.client(cert_path) for _ in range(6)]  # spread over both workers
        for s in clients:
            assert _request(s, "POST /v1/poll HTTP/1.1\nhost: c\ncontent-length: 0\n")[0] == 200
        assert len(psutil.Process(proc.pid).children()) == 2
        proc.terminate()
        assert proc.wait(15) == 0
        for s in clients:
            s.settimeout(5)
            assert s.recv(100) == b""  # close_notify, not a reset
            s.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        backend.close()
