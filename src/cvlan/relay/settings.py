"""cvlan-relay settings: defaults < environment (CVLAN_RELAY_*) < flags."""

from __future__ import annotations

from pathlib import Path

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cvlan.wire.endpoint import split_hostport


class RelaySettings(BaseSettings):
    """Everything one relay process needs, validated at start."""

    model_config = SettingsConfigDict(env_prefix="CVLAN_RELAY_", extra="forbid")

    server: str
    """The controller URL (https://...)."""
    token: str = ""
    """Bootstrap token (cvrb_...). Needed only until the state dir holds a current identity."""
    ca_pin: str = ""
    """sha256:HEX of the controller CA, checked before the token is sent. Empty: system trust."""
    listen: str = "0.0.0.0:443"
    stun_listen: str = "0.0.0.0:3478"
    """UDP HOST:PORT of the STUN responder; empty disables it."""
    state_dir: Path = Path("./cvlan-relay")
    queue_len: int = 512
    """Frames queued per client before the oldest is dropped."""
    keepalive_s: int = 30
    revalidate_s: float = 60.0
    """How often connected node certificates are re-checked against the controller."""
    log_level: str = "info"
    log_format: str = "text"

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

    @field_validator("server")
    @classmethod
    def _server(cls, v: str) -> str:
        if not v.startswith(("https://", "http://")):
            raise ValueError("expected an http(s):// URL")
        return v.rstrip("/")

    @field_validator("ca_pin")
    @classmethod
    def _pin(cls, v: str) -> str:
        if v and (not v.startswith("sha256:") or len(v) != 71):
            raise ValueError("expected sha256: followed by 64 hex digits")
        return v.lower()

    @field_validator("queue_len", "keepalive_s")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be at least 1")
        return v
