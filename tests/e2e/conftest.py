"""Fixtures for end-to-end tests: a network-namespace Lab, torn down even when the test fails."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.netns import Lab


def _missing() -> str:
    if os.geteuid() != 0:
        return "needs root (network namespaces, nftables)"
    for b in ("ip", "nft", "wireguard-go", "ping"):
        if shutil.which(b) is None:
            return f"needs {b} on PATH"
    if not Path("/dev/net/tun").exists():
        return "needs /dev/net/tun"
    return ""


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    why = _missing()
    if why:
        pytest.skip(f"this machine lacks a capability: {why}")
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()
