"""cvlan-relay settings: defaults < environment (CVLAN_RELAY_*) < flags."""

from __future__ import annotations

from pathlib import Path

from pydantic import field_validator
from pydantic_settings import SettingsConfigDict

from cvlan.common.framequeue import FRAME_OVERHEAD
from cvlan.common.settings import InfraSettings
from cvlan.wire import relayproto as rp
from cvlan.wire.endpoint import split_hostport

MIN_QUEUE_BYTES = rp.FRAME_HEADER_LEN + rp.KEY_LEN + rp.MAX_PACKET + FRAME_OVERHEAD


class RelaySettings(InfraSettings):
    """Everything one relay process needs, validated at start."""

    model_config = SettingsConfigDict(env_prefix="CVLAN_RELAY_", extra="forbid")

    server: str
    """The controller URL (https://...); required. token (cvrb_...) and ca_pin: see InfraSettings."""
    listen: str = "0.0.0.0:443"
    stun_listen: str = "0.0.0.0:3478"
    """UDP HOST:PORT of the STUN responder; empty disables it."""
    state_dir: Path = Path("./cvlan-relay")
    queue_len: int = 512
    """Frames queued per client before the oldest is dropped."""
    queue_bytes: int = 1 << 20
    """Bytes queued per client (frame lengths + 64 each) before the oldest frame is dropped."""
    keepalive_s: int = 30
    revalidate_s: float = 60.0
    """How often connected node certificates are re-checked against the controller."""
    fail_open_s: float = 300.0
    """How long after the controller's last answer the relay keeps accepting nodes it cannot check."""

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        split_hostport(v, any_port=True)
        return v

    @field_validator("stun_listen")
    @classmethod
    def _stun(cls, v: str) -> str:
        if v:
            split_hostport(v, any_port=True)
        return v

    @field_validator("fail_open_s")
    @classmethod
    def _fail_open(cls, v: float) -> float:
        if not 0 <= v <= 86400:
            raise ValueError("must be between 0 and 86400 seconds")
        return v

    @field_validator("queue_bytes")
    @classmethod
    def _queue_bytes(cls, v: int) -> int:
        if v < MIN_QUEUE_BYTES:
            raise ValueError(f"must be at least {MIN_QUEUE_BYTES} (one largest frame)")
        return v

    @field_validator("queue_len", "keepalive_s")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be at least 1")
        return v
