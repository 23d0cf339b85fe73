"""The one HAProxy configuration: HAProxy itself accepts what cvlan.sim.front renders."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from cvlan.sim import front

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")


def _pem(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed server certificate and key in one PEM, and a CA file (the same certificate)."""
    pem, ca = tmp_path / "front.pem", tmp_path / "ca.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-subj", "/CN=front", "-days", "1", "-keyout", str(pem), "-out", str(ca)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    pem.write_bytes(ca.read_bytes() + pem.read_bytes())
    return pem, ca


@pytest.mark.parametrize("mtls", [True, False])
def test_haproxy_accepts_the_configuration(tmp_path: Path, mtls: bool) -> None:
    pem, ca = _pem(tmp_path)
    text = front.render_config("127.0.0.1:1", pem, ca if mtls else None, tmp_path / "ctl.sock", 100)
    (tmp_path / "h.cfg").write_text(text)
    check = subprocess.run(
        ["haproxy", "-c", "-q", "-f", str(tmp_path / "h.cfg")], capture_output=True, timeout=30
    )
    assert check.returncode == 0, check.stderr.decode()
    assert ("set-header X-Client-Cert" in text) is mtls and "del-header X-Client-Cert" in text


def test_the_printed_configuration_is_the_rendered_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--pem", "/p.pem", "--ca", "/ca.crt", "--backend", "/run/ctl.sock", "--maxconn", "500"]
    assert front.main(args) == 0
    rendered = front.render_config(":8443", Path("/p.pem"), Path("/ca.crt"), Path("/run/ctl.sock"), 500)
    assert capsys.readouterr().out == rendered
