"""cvland settings: defaults < environment (CVLAND_*) < flags."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


class CvlandSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CVLAND_", extra="forbid")

    socket: Path = Path("/run/cvlan/cvland.sock")
    interface: str = "cvlan0"
    engine: str = "auto"
    """auto (kernel where available, else wireguard-go), wireguard-go, kernel or boringtun."""
    state_dir: Path = Path("/var/lib/cvland")
    socket_group: str = ""
    """If set, the socket is mode 0660 owned by this group (so an unprivileged cvlan-ctrl can use it)."""
    probe_s: float = 5.0
    direct_retry_s: float = 15.0
    stun_interval_s: float = 30.0
    """How often the WireGuard port's public mapping is probed (STUN to every relay)."""
    """While a peer is relayed, first wait before trying direct again (doubles up to 300 s)."""
    tick_s: float = 1.0
    metrics_listen: str = "127.0.0.1:9371"
    """HOST:PORT of the Prometheus /metrics listener, or "off" (docs/METRICS.md)."""
    log_level: str = "info"
    log_format: str = "text"

    @field_validator("interface")
    @classmethod
    def _ifname(cls, v: str) -> str:
        if not _IFNAME.match(v):
            raise ValueError("expected 1-15 characters of A-Z a-z 0-9 _ . -")
        return v

    @field_validator("engine")
    @classmethod
    def _engine(cls, v: str) -> str:
        if v not in ("auto", "wireguard-go", "kernel", "boringtun"):
            raise ValueError("expected auto, wireguard-go, kernel or boringtun")
        return v
