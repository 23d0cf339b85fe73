"""What the daemons' settings share: defaults < environment (PREFIX*) < flags, logging, and for the
infrastructure daemons (relay, vrouter) the controller they register with."""

from __future__ import annotations

from pydantic import ValidationError, field_validator
from pydantic_settings import BaseSettings

__all__ = ["DaemonSettings", "InfraSettings", "invalid_setting"]


class DaemonSettings(BaseSettings):
    """Every daemon logs; each subclass sets model_config with its own env_prefix."""

    log_level: str = "info"
    log_format: str = "text"


class InfraSettings(DaemonSettings):
    """A daemon that registers with the controller with a bootstrap token and keeps its identity."""

    server: str = ""
    """The controller URL (https://...)."""
    token: str = ""
    """Bootstrap token. Needed only until the state dir holds a current identity."""
    ca_pin: str = ""
    """sha256:HEX of the controller CA, checked before the token is sent. Empty: system trust."""

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


def invalid_setting(prog: str, e: ValidationError, env_prefix: str) -> str:
    """The one line a daemon prints (exit status 2) for the first invalid setting."""
    err = e.errors()[0]
    field = ".".join(map(str, err["loc"])) or "settings"
    if err["type"] == "missing":
        msg = f"missing (give --{field.replace('_', '-')} or {env_prefix}{field.upper()})"
    else:
        msg = err["msg"]
    return f"{prog}: invalid setting {field}: {msg}"
