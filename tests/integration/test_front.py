"""cvlan-front with real TLS clients: Python's ssl (what nodes use), `openssl s_client`, tlslite-ng
(an independent TLS 1.3 implementation, which also crafts the records a normal client never sends)
and the sslyze scanner.

The front runs as its own process, with certificates from the controller's CA, in front of a
stand-in for the controller's proxy socket that records every request it is sent. (The whole path
with a real controller, PostgreSQL and 1,000 nodes is the simulator smoke test with --front cvlan.)"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import select
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cvlan.common.pki import new_csr
from cvlan.controller.ca import CertificateAuthority
from cvlan.wire import certid

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # tlslite-ng imports asyncore
    from tlslite.api import HandshakeSettings, TLSConnection, TLSRemoteAlert, X509CertChain, parsePEMKey
    from tlslite.constants import AlertDescription, ContentType, KeyUpdateMessageType
    from tlslite.messages import Message

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
                    request, self.buf = self.buf[: end + 4 + length], self.buf[end + 4 + length :]
                    if request.startswith(b"GET /v1/front/events "):
                        # a controller without the event stream: the front keeps asking, now and then
                        self.t.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                        continue
                    backend.requests.append(request)
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
    # the output goes to a file, not a pipe: a scan's many log lines must not fill it and stop the front
    with (d / "front.log").open("ab") as log:
        proc = subprocess.Popen(
            [*FRONT, "--listen", f"127.0.0.1:{port}", "--cert", str(d / "server.crt"), "--key",
             str(d / "server.key"), "--ca", str(d / "ca.pem"), "--backend", str(backend_path), *extra],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, (d / "front.log").read_text()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("cvlan-front did not listen within 20 s")


@contextlib.contextmanager
def _running(tmp_path: Path, *flags: str) -> Iterator[Running]:
    """cvlan-front with certificates of a new CA, in front of a new Backend, with these flags."""
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    crt, key = ca.issue_server(["127.0.0.1"], tmp_path / "ca")
    shutil.copy(crt, tmp_path / "server.crt")
    shutil.copy(key, tmp_path / "server.key")
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    backend = Backend(tmp_path / "backend.sock")
    proc, port = _start(tmp_path, backend.path, *flags)
    try:
        yield Running(tmp_path, ca, port, backend, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        backend.close()


@pytest.fixture
def front(tmp_path: Path) -> Iterator[Running]:
    with _running(tmp_path, "--idle-timeout", "2", "--request-timeout", "1") as running:
        yield running


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
    forged += "\nX-Cvlan-Park: 1"  # only the front parks polls (docs/FRONT.md, "Long-polls")
    with front.client(None) as s:  # registration comes without a certificate
        assert _request(s, f"POST /v1/register HTTP/1.1\nhost: c\n{forged}\ncontent-length: 0\n")[0] == 200
    cert_path = _node_cert(front.ca, front.d, "node-2")
    with front.client(cert_path) as s:
        assert _request(s, f"POST /v1/poll HTTP/1.1\nhost: c\n{forged}\ncontent-length: 0\n")[0] == 200
    without, with_cert = front.backend.requests
    assert _forwarded_cert(without) is None
    assert _forwarded_cert(with_cert) == x509.load_pem_x509_certificate(cert_path.read_bytes())
    parks = [r.split(b"\r\n\r\n")[0].lower().count(b"\r\nx-cvlan-park:") for r in (without, with_cert)]
    assert parks == [0, 1]  # the front's own on the poll, none from the client


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
    for flag in (
        "--handshake-timeout",
        "--max-uncertified",
        "--max-uncertified-per-addr",
        "--uncertified-timeout",
    ):
        assert flag in out.stdout
    out = subprocess.run(
        [*FRONT, "--listen", "127.0.0.1:1", "--cert", "c", "--key", "k", "--ca", "c", "--backend", "b",
         "--handshake-timeout", "0"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 2 and "--handshake-timeout" in out.stderr
    args = ["--listen", "127.0.0.1:1", "--cert", str(tmp_path / "none.crt"), "--key", "k", "--ca", "c"]
    out = subprocess.run([*FRONT, *args, "--backend", "b"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "none.crt: no such file" in out.stderr
    args[1] = "nowhere"
    out = subprocess.run([*FRONT, *args, "--backend", "b"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "HOST:PORT" in out.stderr


def test_sigterm_stops_every_worker_and_closes_connections(tmp_path: Path) -> None:
    """With --workers 2 the parent forwards SIGTERM: each worker sends close_notify on its open
    connections and exits, and the parent exits 0."""
    with _running(tmp_path, "--workers", "2") as front:
        cert_path = _node_cert(front.ca, tmp_path, "node-6")
        clients = [front.client(cert_path) for _ in range(6)]  # spread over both workers
        for s in clients:
            assert _request(s, "POST /v1/poll HTTP/1.1\nhost: c\ncontent-length: 0\n")[0] == 200
        assert len(psutil.Process(front.proc.pid).children()) == 2
        front.proc.terminate()
        assert front.proc.wait(15) == 0
        for s in clients:
            s.settimeout(5)
            assert s.recv(100) == b""  # close_notify, not a reset
            s.close()


# --- hardening: what the front refuses and bounds ------------------------------------------------


def test_only_the_node_api_is_forwarded(front: Running) -> None:
    """Paths outside the node API (the web UI, metrics, the management API, relay and vrouter calls)
    are answered 404 by the front itself and never reach the controller."""
    cert_path = _node_cert(front.ca, front.d, "node-7")
    for target in ("/ui/login", "/metrics", "/v1/relay/check", "/api/v1/tenants", "/v1/vrouter/poll",
                   "/v1/poll/../../metrics", "/v1//poll", "http://c/v1/poll", "*", "/V1/POLL"):  # fmt: skip
        with front.client(cert_path) as s:
            status, body = _request(s, f"GET {target} HTTP/1.1\nhost: c\n")
            assert (status, b"not a node API path" in body) == (404, True), target
    assert front.backend.requests == []
    with front.client(cert_path) as s:
        assert _request(s, "GET /v1/discover?v=1 HTTP/1.1\nhost: c\n")[0] == 200
        for path in ("/v1/poll", "/v1/renew", "/v1/report", "/v1/register"):
            assert _request(s, f"POST {path} HTTP/1.1\nhost: c\ncontent-length: 0\n")[0] == 200
    assert len(front.backend.requests) == 5


def test_header_names_that_are_not_tokens_are_refused(front: Running) -> None:
    """RFC 9110 field names are tokens: anything else is refused here (400), not left to the parser
    behind the front to read one way or another."""
    cert_path = _node_cert(front.ca, front.d, "node-8")
    for line in (b"x@y: 1", b"x(y): 1", b'x"y: 1', b"x/y: 1", b"x[y]: 1", b"x\x01y: 1", b"x\xffy: 1",
                 b": empty", b"x-a: one\x0btwo", b"x-a: one\x7f"):  # fmt: skip
        with front.client(cert_path) as s:
            head = b"POST /v1/poll HTTP/1.1\r\nhost: c\r\n" + line + b"\r\ncontent-length: 0\r\n\r\n"
            assert _request(s, head)[0] == 400, line
    with front.client(cert_path) as s:  # every token character is fine, and obs-text in a value
        head = b"POST /v1/poll HTTP/1.1\r\nx!#$%&'*+-.^_`|~09az: \xe9\tv\r\ncontent-length: 0\r\n\r\n"
        assert _request(s, head)[0] == 200
    assert len(front.backend.requests) == 1


def test_a_client_that_reads_no_answers_is_not_buffered_for(tmp_path: Path) -> None:
    """A client that pipelines requests and does not read the answers: the front stops reading (and
    forwarding) once a few answers wait unsent, instead of buffering all of them; when the client
    reads, the rest are answered, in order."""
    with _running(tmp_path) as front:
        cert_path = _node_cert(front.ca, front.d, "node-9")
        ctx = ssl.create_default_context(cafile=str(front.d / "ca.pem"))
        ctx.check_hostname = False
        ctx.load_cert_chain(str(cert_path))
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # before connect: a small window
        raw.settimeout(20)
        raw.connect(("127.0.0.1", front.port))
        n, size = 64, 512 * 1024  # 32 MB of answers; the kernel's buffers hold a few MB of them
        with ctx.wrap_socket(raw) as s:
            s.sendall(b"GET /v1/discover HTTP/1.1\r\nhost: c\r\nx-answer-bytes: %d\r\n\r\n" % size * n)
            forwarded = _settled(lambda: len(front.backend.requests))
            assert 1 <= forwarded <= n // 2, forwarded
            for _ in range(n):
                status, body = _read_response(s)
                assert (status, len(body)) == (200, size)
        assert len(front.backend.requests) == n


def _settled(count: Callable[[], int], quiet: float = 1.5, limit: float = 20.0) -> int:
    """The value of `count` once it has not changed for `quiet` seconds (at most `limit` seconds)."""
    deadline = time.monotonic() + limit
    last, since = count(), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < quiet:
        time.sleep(0.1)
        if (now := count()) != last:
            last, since = now, time.monotonic()
    return last


def _read_response(s: ssl.SSLSocket) -> tuple[int, bytes]:
    return _request(s, b"")


def _client_hello() -> bytes:
    """The first flight of a TLS 1.3 client (Python's ssl), to send at any pace."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def _closed_by_peer(s: socket.socket, wait: float) -> bool:
    """The front closed this connection (EOF or reset) within `wait` seconds; what it sent before
    the end (a close_notify) is read and dropped."""
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([s], [], [], left)[0]:
            return False
        try:
            if s.recv(65536) == b"":
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


def test_handshake_deadline_counts_from_accept(tmp_path: Path) -> None:
    """A client that sends its ClientHello a byte at a time is closed at --handshake-timeout after
    accept, however recent its last byte."""
    hello = _client_hello()
    with _running(tmp_path, "--handshake-timeout", "1") as front:
        with socket.create_connection(("127.0.0.1", front.port), timeout=10) as s:
            closed = False
            for i in range(40):  # 40 x 0.25 s: ten times the deadline
                try:
                    s.sendall(hello[i : i + 1])
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                    break
                if _closed_by_peer(s, 0.25):
                    closed = True
                    break
            assert closed and i < len(hello) - 1


def _from(addr: str, port: int) -> socket.socket:
    """A TCP connection to the front from another loopback address."""
    s = socket.socket()
    s.bind((addr, 0))
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    return s


def test_uncertified_connections_have_their_own_small_budget(tmp_path: Path) -> None:
    """Connections without a certificate (here: handshakes never started) are limited per source
    address and in all; at the budget the oldest gives way, so they cannot shut real nodes out."""
    flags = ("--max-uncertified", "3", "--max-uncertified-per-addr", "2", "--handshake-timeout", "30",
             "--uncertified-timeout", "1")  # fmt: skip
    with _running(tmp_path, *flags) as front:
        a1 = _from("127.0.0.2", front.port)
        a2 = _from("127.0.0.2", front.port)
        a3 = _from("127.0.0.2", front.port)
        assert _closed_by_peer(a3, 5)  # the third from one address is closed at once
        b1 = _from("127.0.0.3", front.port)
        assert not _closed_by_peer(b1, 0.2)
        cert_path = _node_cert(front.ca, front.d, "node-10")
        with front.client(cert_path) as s:  # the budget is full: the oldest (a1) makes room
            assert _request(s, "POST /v1/poll HTTP/1.1\nhost: c\ncontent-length: 0\n")[0] == 200
            assert _closed_by_peer(a1, 5)
            ctx = ssl.create_default_context(cafile=str(front.d / "ca.pem"))
            ctx.check_hostname = False
            ctx.load_cert_chain(str(cert_path))
            with ctx.wrap_socket(a2) as s2:  # the others were kept: a2 completes its handshake
                assert _request(s2, "POST /v1/poll HTTP/1.1\nhost: c\ncontent-length: 0\n")[0] == 200
        for c in (a1, a3, b1):
            c.close()
        # the operator is told: one refused (a3), one pushed out (a1), in one sweep's line or two
        assert _limit_counts(front.d / "front.log") == (1, 1)


def _limit_counts(log: Path, limit: float = 10.0) -> tuple[int, int]:
    """Connections refused and pushed out, summed over the front's log lines that tell them, once
    both are non-zero (waiting up to `limit` seconds for them)."""
    counts = (0, 0)
    deadline = time.monotonic() + limit
    while 0 in counts and time.monotonic() < deadline:
        time.sleep(0.1)
        found = re.findall(rb"(\d+) refused at accept, (\d+) uncertified pushed out", log.read_bytes())
        counts = (sum(int(r) for r, _ in found), sum(int(p) for _, p in found))
    return counts


def _tlslite(front: Running, cert: Path | None, suite: str | None = None) -> TLSConnection:
    """A TLS 1.3 connection from tlslite-ng, an implementation independent of OpenSSL."""
    hs = HandshakeSettings()
    hs.minVersion = hs.maxVersion = (3, 4)
    hs.certificate_compression_send = []  # tlslite-ng 0.8.2 compresses its Certificate unasked
    if suite is not None:
        hs.cipherNames = [suite]
    conn = TLSConnection(socket.create_connection(("127.0.0.1", front.port), timeout=10))
    if cert is None:
        conn.handshakeClientCert(settings=hs)
    else:
        pem = cert.read_text()
        chain = X509CertChain()
        chain.parsePemList(pem)
        conn.handshakeClientCert(chain, parsePEMKey(pem, private=True), settings=hs)
    return conn


def _send_record(conn: TLSConnection, content_type: int, data: bytes, padding: int = 0) -> None:
    """One protected record as given: no fragmenting, `padding` zero bytes after the type."""
    layer = conn._recordLayer
    layer.padding_cb = (lambda *_: padding) if padding else None
    for _ in layer.sendRecord(Message(content_type, bytearray(data))):
        pass
    layer.padding_cb = None


def _tlslite_request(conn: TLSConnection, head: bytes) -> bytes:
    conn.write(head)
    answer = b""
    while b"\r\n\r\n" not in answer or not answer.endswith(b"aaaaa"):
        chunk = conn.read()
        assert chunk, answer
        answer += bytes(chunk)
    return answer


@pytest.mark.parametrize("suite", ["aes128gcm", "aes256gcm", "chacha20-poly1305"])
def test_tlslite_client_key_updates_and_no_session_tickets(front: Running, suite: str) -> None:
    """tlslite-ng as the client, with each cipher suite: requests are answered before and after
    KeyUpdates (asked for and not), and the front sends no session tickets (it resumes none), so its
    first record is number 0 of its traffic key."""
    cert_path = _node_cert(front.ca, front.d, "node-11")
    conn = _tlslite(front, cert_path, suite)
    try:
        head = b"POST /v1/poll HTTP/1.1\r\nhost: c\r\ncontent-length: 0\r\n\r\n"
        assert _tlslite_request(conn, head).startswith(b"HTTP/1.1 200 OK")
        for kind in (KeyUpdateMessageType.update_requested, KeyUpdateMessageType.update_not_requested):
            for _ in conn.send_keyupdate_request(kind):
                pass
            assert _tlslite_request(conn, head).startswith(b"HTTP/1.1 200 OK")
        assert conn.tickets == []
    finally:
        conn.sock.close()
    assert len(front.backend.requests) == 3


@pytest.mark.parametrize(
    ("content_type", "data", "padding", "alert"),
    [
        # 2^14 bytes of content are allowed, but not with padding past 2^14 + 1 in all (RFC 8446 5.4)
        (ContentType.application_data, b"a" * 2**14, 100, AlertDescription.record_overflow),
        # handshake records are never empty (RFC 8446 5.1)
        (ContentType.handshake, b"", 0, AlertDescription.unexpected_message),
    ],
    ids=["padded-over-2^14+1", "empty-handshake-record"],
)
def test_record_layer_violations_get_their_alert(
    front: Running, content_type: int, data: bytes, padding: int, alert: int
) -> None:
    conn = _tlslite(front, None)
    try:
        _send_record(conn, content_type, data, padding)
        with pytest.raises(TLSRemoteAlert) as e:
            conn.read()
        assert e.value.description == alert
    finally:
        conn.sock.close()
    assert front.backend.requests == []


def test_request_then_close_notify_in_one_read_is_answered(front: Running) -> None:
    """TLS 1.3 close_notify closes one direction: a request sent just before it is still answered,
    then the front closes too."""
    conn = _tlslite(front, None)
    try:
        conn.sock.buffer_writes = True  # both records in one write
        _send_record(conn, ContentType.application_data, b"GET /v1/discover HTTP/1.1\r\nhost: c\r\n\r\n")
        _send_record(conn, ContentType.alert, bytes([1, AlertDescription.close_notify]))
        conn.sock.flush()
        conn.sock.buffer_writes = False
        answer = b""
        while chunk := conn.read():
            answer += bytes(chunk)
        assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"aaaaa")
    finally:
        conn.sock.close()
    assert len(front.backend.requests) == 1


@pytest.mark.parametrize("certified", [False, True], ids=["uncertified", "certified"])
def test_empty_records_do_not_keep_a_connection_open(tmp_path: Path, certified: bool) -> None:
    """Zero-length application data records are not activity: the connection is closed at
    --uncertified-timeout (without a certificate) or --idle-timeout (with one) all the same."""
    flags = ("--idle-timeout", "2", "--uncertified-timeout", "1")
    with _running(tmp_path, *flags) as front:
        conn = _tlslite(front, _node_cert(front.ca, front.d, "node-12") if certified else None)
        try:
            closed = False
            for _ in range(30):  # 30 x 0.3 s: far past either timeout
                try:
                    _send_record(conn, ContentType.application_data, b"")
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                    break
                if _closed_by_peer(conn.sock.socket, 0.3):
                    closed = True
                    break
            assert closed
        finally:
            conn.sock.close()


SSLYZE = Path(__file__).resolve().parents[2] / ".venv-sslyze" / "bin" / "python"


def test_scanner_finds_only_tls13_and_the_front_still_serves(front: Running, tmp_path: Path) -> None:
    """sslyze (in its own virtualenv: it pins an older cryptography than ours; `make venv` makes it)
    probes every protocol version, compression, renegotiation, early data, resumption, CCS injection,
    Heartbleed and ROBOT; the front offers TLS 1.3 alone, and serves a node afterwards."""
    assert SSLYZE.exists(), "sslyze's virtualenv is missing: run `make venv`"
    out = tmp_path / "scan.json"
    scans = ["--sslv2", "--sslv3", "--tlsv1", "--tlsv1_1", "--tlsv1_2", "--tlsv1_3", "--compression",
             "--reneg", "--resum", "--early_data", "--openssl_ccs", "--heartbleed", "--robot",
             "--fallback"]  # fmt: skip
    subprocess.run(
        [str(SSLYZE), "-m", "sslyze", "--quiet", "--mozilla_config", "disable", *scans,
         "--json_out", str(out), f"127.0.0.1:{front.port}"],
        check=True, timeout=120, capture_output=True,
    )  # fmt: skip
    (server,) = json.loads(out.read_text())["server_scan_results"]
    assert server["scan_status"] == "COMPLETED", server.get("connectivity_error_trace")
    res = {name: r["result"] for name, r in server["scan_result"].items() if r["status"] == "COMPLETED"}
    assert len(res) == len(scans)  # every probe completed
    for old in ("ssl_2_0", "ssl_3_0", "tls_1_0", "tls_1_1", "tls_1_2"):
        assert res[f"{old}_cipher_suites"]["accepted_cipher_suites"] == [], old
    suites = {c["cipher_suite"]["name"] for c in res["tls_1_3_cipher_suites"]["accepted_cipher_suites"]}
    assert suites == {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}
    assert res["tls_compression"]["supports_compression"] is False
    reneg = res["session_renegotiation"]
    assert reneg["client_renegotiations_success_count"] == 0
    assert reneg["is_vulnerable_to_client_renegotiation_dos"] is False
    assert res["tls_1_3_early_data"]["supports_early_data"] is False
    assert res["session_resumption"]["tls_ticket_successful_resumptions_count"] == 0
    assert res["session_resumption"]["session_id_successful_resumptions_count"] == 0
    assert res["openssl_ccs_injection"]["is_vulnerable_to_ccs_injection"] is False
    assert res["heartbleed"]["is_vulnerable_to_heartbleed"] is False
    assert front.proc.poll() is None
    with front.client(_node_cert(front.ca, front.d, "node-13")) as s:
        assert _request(s, "POST /v1/poll HTTP/1.1\nhost: c\ncontent-length: 0\n")[0] == 200
    assert len(front.backend.requests) == 1
