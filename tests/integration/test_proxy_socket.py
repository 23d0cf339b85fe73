"""`cvlan-controller serve --proxy-socket`: plain HTTP on a Unix socket for a TLS front on this host.

The front has verified the node's certificate and forwards it in X-Client-Cert; the controller
believes that header on the socket (and still checks the certificate is from its CA), never on its
TCP listener from an untrusted address."""

from __future__ import annotations

import datetime as dt
import signal
import ssl
import stat
import urllib.parse
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization

from cvlan.client import tls
from cvlan.controller.ca import CertificateAuthority
from cvlan.wire import nodeproto as wire
from cvlan.wire.pb import node_pb2 as pb
from tests.harness import proxysocket
from tests.harness.controller import free_port


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
            assert await _poll_with_header(front, "http://front/v1/poll", reg.certificate_pem) == reg.node_id
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
            got = await _poll_with_header(direct, conf.server + "/v1/poll", reg.certificate_pem, ssl=ctx)
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
