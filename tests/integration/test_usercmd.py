"""`cvlan-controller useradd` / `passwd` give people a password the web UI accepts."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from cvlan.controller.__main__ import main
from cvlan.controller.app import build
from cvlan.controller.settings import ControllerSettings
from cvlan.controller.web import signin


async def _check(data: Path, db_url: str, email: str, password: str) -> str:
    c = await build(ControllerSettings(data_dir=data, db=db_url))
    try:
        out = await signin.check(c.ctx, email, password)
        return "ok" if out.user is not None else out.error
    finally:
        await c.engine.dispose()


def test_useradd_then_passwd(
    tmp_path: Path, db_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    data = tmp_path / "data"
    base = ["--data-dir", str(data), "--db", db_url, "--email", "Root@Example.com"]
    assert main(["useradd", *base, "--platform-admin"]) == 0
    out = capsys.readouterr().out
    generated = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("password: "))
    assert asyncio.run(_check(data, db_url, "root@example.com", generated)) == "ok"

    assert main(["useradd", *base, "--platform-admin"]) == 1
    assert "already exists" in capsys.readouterr().err

    monkeypatch.setattr(sys, "stdin", io.StringIO("short\n"))
    assert main(["passwd", *base, "--password-stdin"]) == 1
    assert "at least 10 characters" in capsys.readouterr().err
    assert asyncio.run(_check(data, db_url, "root@example.com", generated)) == "ok"  # unchanged

    monkeypatch.setattr(sys, "stdin", io.StringIO("a-new-long-password\n"))
    assert main(["passwd", *base, "--password-stdin"]) == 0
    assert "password:" not in capsys.readouterr().out  # nothing generated, nothing echoed
    assert asyncio.run(_check(data, db_url, "root@example.com", "a-new-long-password")) == "ok"
    assert "not correct" in asyncio.run(_check(data, db_url, "root@example.com", generated))

    assert (
        main(["useradd", *base[:4], "--email", "x@example.com", "--tenant", "nope", "--role", "admin"]) == 1
    )
    assert "tenant 'nope' not found" in capsys.readouterr().err
    assert main(["useradd", *base[:4], "--email", "x@example.com", "--role", "admin"]) == 2
