"""`make demo` end to end: controller + three nodes (one behind NAT) in namespaces, pings, cleanup."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.controller import free_port
from tests.harness.netns import sh

pytestmark = pytest.mark.e2e


def test_demo_builds_the_mesh_pings_across_and_cleans_up(lab: object, tmp_path: Path) -> None:
    port = free_port()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "cvlan.devtools.demo",
            "--check",
            "--data-dir",
            str(tmp_path / "data"),
            "--listen",
            f"127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    for name in ("node1", "node2", "node3"):
        assert f"  {name} -> " in out
    assert out.count("1/1 replies, path direct") == 6, out
    assert "NAME" in out and "ADDRESS" in out
    # Everything the demo created is gone.
    ns_prefix = out.split("controller up in namespace ")[1].split("-ctl")[0]
    assert ns_prefix not in sh("ip", "netns", "list")
