"""cvlan-relay's command line: help, usage errors (exit 2, one line), bootstrap failure (exit 1)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

RELAY = str(Path(sys.executable).parent / "cvlan-relay")


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RELAY, *args], capture_output=True, text=True, timeout=60, env=env)


def test_help_lists_every_flag() -> None:
    r = run("--help")
    assert r.returncode == 0
    for flag in (
        "--server",
        "--token",
        "--ca-pin",
        "--listen",
        "--stun-listen",
        "--state-dir",
        "--queue-len",
        "--queue-bytes",
        "--fail-open-s",
    ):
        assert flag in r.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "cvlan-relay: invalid setting server: missing (give --server or CVLAN_RELAY_SERVER)"),
        (
            ("--server", "ftp://x"),
            "cvlan-relay: invalid setting server: Value error, expected an http(s):// URL",
        ),
        (
            ("--server", "https://x", "--ca-pin", "md5:00"),
            "cvlan-relay: invalid setting ca_pin: Value error, expected sha256: followed by 64 hex digits",
        ),
        (
            ("--server", "https://x", "--listen", "nope"),
            "cvlan-relay: invalid setting listen: Value error, expected HOST:PORT, e.g. 0.0.0.0:443",
        ),
        (
            ("--server", "https://x", "--queue-bytes", "4096"),
            "cvlan-relay: invalid setting queue_bytes: Value error, must be at least 65636 "
            "(one largest frame)",
        ),
        (
            ("--server", "https://x", "--fail-open-s", "-1"),
            "cvlan-relay: invalid setting fail_open_s: Value error, must be between 0 and 86400 seconds",
        ),
    ],
)
def test_usage_errors_exit_2_with_one_line(args: tuple[str, ...], message: str, tmp_path: Path) -> None:
    r = run(*args, "--state-dir", str(tmp_path / "s"))
    assert r.returncode == 2
    assert r.stderr.strip() == message
    assert not (tmp_path / "s").exists()


def test_no_identity_and_no_token_exits_1(tmp_path: Path) -> None:
    r = run("--server", "https://127.0.0.1:9", "--state-dir", str(tmp_path / "s"))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"cvlan-relay: no relay identity in {tmp_path / 's'} and no --token given"
    ]
