"""The controller on the internet: the operator's own certificate on the web listener (loaded again
when its files change or on SIGHUP), nodes still pinned to the controller's CA on the main listener,
and the CA-signed server certificate renewed before it expires. A real `cvlan-controller serve`
process on loopback, SQLite. About 15 s."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cvlan.common.clock import FakeClock
from cvlan.controller.ca import CertificateAuthority
from cvlan.controller.settings import ControllerSettings
from cvlan.controller.tlsserve import TlsKeeper, server_hosts
from tests.harness.controller import free_port

BIN = Path(sys.executable).parent
DAY = dt.timedelta(days=1)


class OperatorCa:
    """Stands in for a public CA (ACME): its own root, leaves for 127.0.0.1 and localhost."""

    def __init__(self, tmp: Path) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Operator test root")])
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - DAY)
            .not_valid_after(now + 30 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM).decode()
        self.crt, self.key_path = tmp / "web" / "fullchain.pem", tmp / "web" / "privkey.pem"
        self.crt.parent.mkdir(parents=True)

    def issue(self) -> int:
        """Write a fresh leaf and key (like a renewal hook would); the leaf's serial."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - DAY)
            .not_valid_after(now + 10 * DAY)
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        self.key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        self.key_path.chmod(0o600)
        self.crt.write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + self.pem.encode())
        return leaf.serial_number


def served_cert(port: int) -> x509.Certificate:
    """The certificate 127.0.0.1:port presents (not verified: the caller checks what it is)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw) as s:
        der = s.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def get(url: str, cafile_pem: str, token: str = "") -> tuple[int, str]:
    ctx = ssl.create_default_context(cadata=cafile_pem)  # only this root: not the system's
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, context=ctx, timeout=5) as r:
        return r.status, r.read().decode(errors="replace")


def until(what: str, fn: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"not in time: {what}")


@pytest.fixture
def op_ca(tmp_path: Path) -> OperatorCa:
    return OperatorCa(tmp_path)


@pytest.fixture
def serve(tmp_path: Path, op_ca: OperatorCa) -> Iterator[tuple[subprocess.Popen[str], int, int]]:
    node_port, web_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVLAN_")}
    env["CVLAN_CONTROLLER_TLS_CHECK_INTERVAL_S"] = "0.5"
    op_ca.issue()
    # A server certificate issued 600 of its 825 days ago: still valid, but due for renewal.
    data = tmp_path / "data"
    data.mkdir()
    settings = ControllerSettings(data_dir=data, listen=f"127.0.0.1:{node_port}")
    ca = CertificateAuthority.load_or_create(data)
    ca.issue_server(server_hosts(settings), data, dt.datetime.now(dt.UTC) - 600 * DAY)
    (data / "server.hosts").write_text("\n".join(server_hosts(settings)))
    p = subprocess.Popen(
        [
            str(BIN / "cvlan-controller"),
            "serve",
            "--data-dir",
            str(data),
            "--listen",
            f"127.0.0.1:{node_port}",
            "--web-listen",
            f"127.0.0.1:{web_port}",
            "--web-cert",
            str(op_ca.crt),
            "--web-key",
            str(op_ca.key_path),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        until("controller listening", lambda: (data / "admin.conf").exists() and _open(web_port), 30)
        yield p, node_port, web_port
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(15)


def _open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def admin_token(data: Path) -> str:
    line = next(x for x in (data / "admin.conf").read_text().splitlines() if x.startswith("token = "))
    return line.split(" = ", 1)[1]


def test_web_listener_serves_the_operators_certificate_and_reloads_it(
    serve: tuple[subprocess.Popen[str], int, int], op_ca: OperatorCa, tmp_path: Path
) -> None:
    proc, node_port, web_port = serve
    data = tmp_path / "data"
    ca_pem = (data / "ca.crt").read_text()
    token = admin_token(data)

    # Browsers and admin tools: the operator's chain verifies for the web listener's address.
    status, body = get(f"https://127.0.0.1:{web_port}/api/v1/tenants", op_ca.pem, token)
    assert status == 200 and json.loads(body)["items"] == []
    assert served_cert(web_port).issuer == op_ca.cert.subject
    # Nodes: the main listener still presents the CA-signed certificate; the operator's root does
    # not vouch for it, the pinned controller CA does.
    assert get(f"https://127.0.0.1:{node_port}/v1/discover", ca_pem)[0] == 200
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        get(f"https://127.0.0.1:{node_port}/healthz", op_ca.pem)

    # Renewal by the operator's tooling: picked up by the file check, no signal needed.
    serial = op_ca.issue()
    until("renewed web certificate served", lambda: served_cert(web_port).serial_number == serial)
    # A broken renewal (key of another certificate) is refused; the last good one stays.
    good = serial
    other = OperatorCa(tmp_path / "other")
    other.issue()
    op_ca.key_path.write_bytes(other.key_path.read_bytes())
    proc.send_signal(signal.SIGHUP)
    time.sleep(1.5)
    assert served_cert(web_port).serial_number == good
    assert get(f"https://127.0.0.1:{web_port}/healthz", op_ca.pem)[0] == 200
    # And on SIGHUP once fixed.
    serial = op_ca.issue()
    proc.send_signal(signal.SIGHUP)
    until("web certificate served after SIGHUP", lambda: served_cert(web_port).serial_number == serial)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=15)
    assert f"web certificate {op_ca.crt} not reloaded, the previous one stays" in err


def test_a_server_certificate_due_for_renewal_is_issued_again_at_start(
    serve: tuple[subprocess.Popen[str], int, int], tmp_path: Path
) -> None:
    _, node_port, _ = serve
    ca = CertificateAuthority.load_or_create(tmp_path / "data")
    cert = served_cert(node_port)
    assert dt.datetime.now(dt.UTC) - cert.not_valid_before_utc < dt.timedelta(minutes=10)
    cert.verify_directly_issued_by(ca.cert)
    get(f"https://127.0.0.1:{node_port}/healthz", ca.cert_pem.decode())


async def test_the_running_controller_renews_its_server_certificate_before_it_expires(tmp_path: Path) -> None:
    import asyncio

    clock = FakeClock(dt.datetime.now(dt.UTC))
    settings = ControllerSettings(data_dir=tmp_path, listen="127.0.0.1:1")
    ca = CertificateAuthority.load_or_create(tmp_path)
    keeper = TlsKeeper(settings, ca, clock)
    first = x509.load_pem_x509_certificate((tmp_path / "server.crt").read_bytes())
    clock.advance(500 * 86400)
    assert keeper.check() == []  # 500 of 825 days: not yet
    clock.advance(60 * 86400)
    assert keeper.check() == ["server"]  # past two thirds: renewed while it is still valid
    assert first.not_valid_after_utc > clock.now()
    renewed = x509.load_pem_x509_certificate((tmp_path / "server.crt").read_bytes())
    assert renewed.serial_number != first.serial_number
    assert renewed.not_valid_before_utc > clock.now() - dt.timedelta(minutes=10)
    # The live context serves the renewed certificate to new connections.
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=keeper.node_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        got = await asyncio.to_thread(served_cert, port)
    finally:
        server.close()
    assert got.serial_number == renewed.serial_number
