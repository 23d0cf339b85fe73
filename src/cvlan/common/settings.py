"""What the daemons' settings share: defaults < environment (PREFIX*) < flags, logging, and for the
infrastructure daemons (relay, vrouter) the controller they register with."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from pydantic import ValidationError, field_validator
from pydantic_settings import BaseSettings

from cvlan.common import log as cvlog

__all__ = ["DaemonSettings", "InfraSettings", "invalid_setting", "run_daemon", "settings_from_args"]


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


S = TypeVar("S", bound=DaemonSettings)


def settings_from_args(cls: type[S], args: argparse.Namespace, names: tuple[str, ...]) -> S:
    """The settings of cls: the flags among names (and the logging flags) that were given, over the
    environment and the defaults."""
    wanted = (*names, "log_format", "log_level")
    return cls(**{k: getattr(args, k) for k in wanted if getattr(args, k) is not None})


def run_daemon(
    prog: str,
    env_prefix: str,
    load: Callable[[], S],
    serve: Callable[[S], Coroutine[Any, Any, int]],
    fatal: tuple[type[Exception], ...],
) -> int:
    """A daemon's command line contract: an invalid setting is one line and exit status 2; then
    logging as set, serve until it returns its status; an error of a fatal kind is one line and
    status 1; an interrupt ends it with 0."""
    try:
        settings = load()
    except ValidationError as e:
        sys.stderr.write(invalid_setting(prog, e, env_prefix) + "\n")
        return 2
    cvlog.setup(settings.log_level, settings.log_format)
    try:
        return asyncio.run(serve(settings))
    except fatal as e:
        sys.stderr.write(f"{prog}: {e}\n")
        return 1
    except KeyboardInterrupt:
        return 0
