"""cvlan-vrouter settings: defaults < environment (CVLAN_VROUTER_*) < flags."""

from __future__ import annotations

from pathlib import Path

from pydantic import field_validator
from pydantic_settings import SettingsConfigDict

from cvlan.common.host import check_interface_name
from cvlan.common.settings import InfraSettings


class VrouterSettings(InfraSettings):
    """Everything one vrouter process needs, validated at start."""

    model_config = SettingsConfigDict(env_prefix="CVLAN_VROUTER_", extra="forbid")

    # server (empty: the one saved in the state dir), token (cvvb_...), ca_pin: see InfraSettings.
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

    @field_validator("interface")
    @classmethod
    def _ifname(cls, v: str) -> str:
        return check_interface_name(v)

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
