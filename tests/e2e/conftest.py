"""Fixtures for end-to-end tests: a network-namespace Lab, torn down even when the test fails."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.netns import Lab, Netns


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


@pytest.fixture
def own_resolv_conf() -> Iterator[list[Netns]]:
    """Namespaces listed here (by give_resolv_conf) get /etc/netns/<name>/resolv.conf, bind-mounted
    over /etc/resolv.conf by `ip netns exec`, removed at the end."""
    made: list[Netns] = []
    yield made
    for ns in made:
        shutil.rmtree(Path("/etc/netns") / ns.name, ignore_errors=True)


def give_resolv_conf(ns: Netns, made: list[Netns], text: str) -> Path:
    """The namespace's own resolv.conf with text (so cvland's resolv.conf mode never touches the host's)."""
    d = Path("/etc/netns") / ns.name
    d.mkdir(parents=True, exist_ok=False)
    made.append(ns)
    (d / "resolv.conf").write_text(text)
    return d / "resolv.conf"
