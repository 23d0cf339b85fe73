"""cvland settings: defaults < environment (CVLAND_*) < flags."""

from __future__ import annotations

from pathlib import Path

from pydantic import field_validator
from pydantic_settings import SettingsConfigDict

from cvlan.common.host import check_interface_name
from cvlan.common.settings import DaemonSettings

DNS_MODES = ("auto", "systemd-resolved", "resolv.conf", "off")


class CvlandSettings(DaemonSettings):
    model_config = SettingsConfigDict(env_prefix="CVLAND_", extra="forbid")

    socket: Path = Path("/run/cvland/cvland.sock")
    interface: str = "cvlan0"
    engine: str = "auto"
    """auto (kernel where available, else wireguard-go), wireguard-go, kernel or boringtun."""
    state_dir: Path = Path("/var/lib/cvland")
    socket_group: str = ""
    """If set, the socket is mode 0660 owned by this group (so an unprivileged cvlan-ctrl can use it)."""
    probe_s: float = 5.0
    direct_retry_s: float = 15.0
    """While a peer is relayed, first wait before trying direct again (doubles up to 300 s)."""
    stun_interval_s: float = 30.0
    """How often the WireGuard port's public mapping is probed (STUN to every relay)."""
    tick_s: float = 1.0
    metrics_listen: str = "127.0.0.1:9371"
    """HOST:PORT of the Prometheus /metrics listener, or "off" (docs/METRICS.md)."""
    dns_mode: str = "auto"
    """How the host is pointed at the node's resolver for overlay names (docs/DNS.md): auto
    (systemd-resolved where it runs, else resolv.conf), systemd-resolved, resolv.conf, or off (no
    resolver, host DNS untouched)."""
    resolv_conf: Path = Path("/etc/resolv.conf")
    """The file the resolv.conf mode manages (saved in state_dir first, restored on down/stop)."""

    @field_validator("interface")
    @classmethod
    def _ifname(cls, v: str) -> str:
        return check_interface_name(v)

    @field_validator("dns_mode")
    @classmethod
    def _dns_mode(cls, v: str) -> str:
        if v not in DNS_MODES:
            raise ValueError(f"expected {', '.join(DNS_MODES)}")
        return v

    @field_validator("engine")
    @classmethod
    def _engine(cls, v: str) -> str:
        if v not in ("auto", "wireguard-go", "kernel", "boringtun"):
            raise ValueError("expected auto, wireguard-go, kernel or boringtun")
        return v
