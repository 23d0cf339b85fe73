"""`cvlan-controller serve --proxy-socket`: plain HTTP on a Unix socket for a TLS front on this host.

The front has verified the node's certificate and forwards it in X-Client-Cert; the controller
believes that header on the socket (and still checks the certificate is from its CA), never on its
TCP listener from an untrusted address."""

from __future__ import annotations

import datetime as dt
import os
import signal
import ssl
import stat
import subprocess
import urllib.parse
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization

from cvlan.client import tls
from cvlan.controller.ca import CertificateAuthority
from cvlan.devtools.harness.controller import free_port, inherited_env, serve_argv
from cvlan.wire import nodeproto as wire
from cvlan.wire.pb import node_pb2 as pb
from tests.harness import proxysocket


async def _poll_with_header(session: aiohttp.ClientSession, url: str, cert_pem: str, **kw: object) -> int:
    body = pb.PollRequest(capability_version=wire.CAPABILITY_VERSION).SerializeToString()
    headers = {"Content-Type": wire.CT_PROTO, "X-Client-Cert": urllib.parse.quote(cert_pem)}
    async with session.post(url, data=body, headers=headers, **kw) as r:  # type: ignore[arg-type]
        if r.status == 200:
            got = wire.decode(pb.PollResponse, await r.read())
            return int(got.map.self.node_id)
        return -r.status


@pytest.mark.timeout(120)
async def test_proxy_socket_trusts_the_forwarded_certificate(tmp_path: Path) -> None:
    data, sock, port = tmp_path / "ctl", tmp_path / "ctl.sock", free_port()
    proc = proxysocket.serve(data, sock, port=port)
    try:
        conf = await proxysocket.wait_ready(proc, data, sock)
        assert stat.S_ISSOCK(sock.stat().st_mode) and stat.S_IMODE(sock.stat().st_mode) == 0o660
        _, reg = await proxysocket.enrol(conf, "behind-front")

        # Through the socket, as the front forwards it: the node is recognised by its certificate.
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as front:
            assert await _poll_with_header(front, "http://front/v1/poll", reg.cert_pem) == reg.node_id
            # A certificate of another CA is refused even there.
            _, other_csr = tls.new_key_and_csr()
            rogue = CertificateAuthority.load_or_create(tmp_path / "rogue")
            fake = rogue.issue_client(
                other_csr.encode(), common_name="x", lifetime=dt.timedelta(days=1), identity={}
            )
            fake_pem = fake.public_bytes(serialization.Encoding.PEM).decode()
            assert await _poll_with_header(front, "http://front/v1/poll", fake_pem) == -401
        # The same header over TCP from an address that is not a trusted proxy is ignored: 401.
        ctx = ssl.create_default_context(cadata=conf.ca_pem)  # no client certificate
        async with aiohttp.ClientSession() as direct:
            got = await _poll_with_header(direct, conf.server + "/v1/poll", reg.cert_pem, ssl=ctx)
            assert got == -401
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert not sock.exists(), "the socket is removed on a clean stop"


def test_proxy_socket_path_taken_by_a_file_is_refused(tmp_path: Path) -> None:
    sock = tmp_path / "ctl.sock"
    sock.write_text("not a socket")
    proc = proxysocket.serve(tmp_path / "ctl", sock)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    lines = out.decode().strip().splitlines()
    assert any(f"cannot listen on proxy socket {sock}" in line for line in lines), lines
    assert sock.read_text() == "not a socket"


def _serve_stderr(data: Path, sock: Path) -> subprocess.CompletedProcess[str]:
    cmd = serve_argv(data, f"127.0.0.1:{free_port()}", proxy_socket=sock, metrics_listen="")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=inherited_env())


@pytest.mark.parametrize(
    ("mode", "owner", "why"),
    [
        (0o777, 0, "writable by group and others"),
        (0o770, 0, "writable by group"),
        (0o757, 0, "writable by others"),
        (0o755, 65534, "owned by uid 65534"),
    ],
)
def test_proxy_socket_in_a_directory_others_may_write_is_refused(
    tmp_path: Path, mode: int, owner: int, why: str
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chown(shared, owner, -1)
    shared.chmod(mode)
    for sock in (shared / "ctl.sock", shared / "deeper" / "ctl.sock"):
        if sock.parent != shared:
            sock.parent.mkdir(mode=0o755)
            sock.parent.chmod(0o755)
        r = _serve_stderr(tmp_path / "ctl", sock)
        assert r.returncode == 1, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and f"refusing proxy socket {sock}" in lines[0] and why in lines[0], lines
        assert f"directory {shared} " in lines[0], lines
        assert not sock.exists() and not (tmp_path / "ctl").exists(), "nothing is created"


@pytest.mark.timeout(120)
async def test_proxy_socket_in_a_sticky_shared_directory_is_accepted(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    sock = shared / "ctl.sock"
    proc = proxysocket.serve(tmp_path / "ctl", sock)
    try:
        await proxysocket.wait_ready(proc, tmp_path / "ctl", sock)
        assert stat.S_IMODE(sock.stat().st_mode) == 0o660
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0
