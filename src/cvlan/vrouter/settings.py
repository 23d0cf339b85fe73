"""cvlan-vrouter settings: defaults < environment (CVLAN_VROUTER_*) < flags."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


class VrouterSettings(BaseSettings):
    """Everything one vrouter process needs, validated at start."""

    model_config = SettingsConfigDict(env_prefix="CVLAN_VROUTER_", extra="forbid")

    server: str = ""
    """The controller URL (https://...). Empty: the one saved in the state dir."""
    token: str = ""
    """Bootstrap token (cvvb_...). Needed only until the state dir holds an identity."""
    ca_pin: str = ""
    """sha256:HEX of the controller CA, checked before the token is sent. Empty: system trust."""
    state_dir: Path = Path("./cvlan-vrouter")
    interface: str = "cvlan-hub0"
    """The WireGuard hub interface this vrouter owns."""
    engine: str = "auto"
    """auto (kernel where it has WireGuard, else wireguard-go), wireguard-go, boringtun or kernel."""
    listen_port: int = 0
    """UDP port of the hub. 0: the port of the vrouter's registered endpoint."""
    long_poll_s: int = 25
    """How long the controller may hold a poll open while nothing changes."""
    metrics_listen: str = "127.0.0.1:9373"
    """HOST:PORT of the Prometheus /metrics listener, or "off" (docs/METRICS.md)."""
    log_level: str = "info"
    log_format: str = "text"

    @field_validator("server")
    @classmethod
    def _server(cls, v: str) -> str:
        if v and not v.startswith(("https://", "http://")):
            raise ValueError("expected an http(s):// URL")
        return v.rstrip("/")

    @field_validator("ca_pin")
    @classmethod
    def _pin(cls, v: str) -> str:
        if v and (not v.startswith("sha256:") or len(v) != 71):
            raise ValueError("expected sha256: followed by 64 hex digits")
        return v.lower()

    @field_validator("interface")
    @classmethod
    def _ifname(cls, v: str) -> str:
        if not _IFNAME.match(v):
            raise ValueError("expected 1-15 of A-Z a-z 0-9 _ . -")
        return v

    @field_validator("listen_port")
    @classmethod
    def _port(cls, v: int) -> int:
        if not 0 <= v < 65536:
            raise ValueError("expected 0-65535")
        return v

    @field_validator("long_poll_s")
    @classmethod
    def _long_poll(cls, v: int) -> int:
        if not 0 <= v <= 60:
            raise ValueError("expected 0-60 seconds")
        return v
