"""cvlancli's human-readable bytes and ages, and its refusal of a bad netcheck timeout."""

from __future__ import annotations

import pytest

from cvlan.cli.node import ago, human_bytes, main


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (5 * 2**20, "5.0 MiB"),
        (3 * 2**40, "3.0 TiB"),
    ],
)
def test_human_bytes(n: int, text: str) -> None:
    assert human_bytes(n) == text


@pytest.mark.parametrize(
    ("age", "text"),
    [
        (5, "5s ago"),
        (119, "119s ago"),
        (600, "10m ago"),
        (3 * 3600 + 240, "3h 4m ago"),
        (2 * 86400 + 5 * 3600, "2d 5h ago"),
    ],
)
def test_ago(age: int, text: str) -> None:
    assert ago(1_000_000.0 - age, 1_000_000.0) == text
    assert ago(0.0, 1_000_000.0) == "never"


def test_netcheck_timeout_out_of_range_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["netcheck", "--timeout", "0"]) == 2
    assert capsys.readouterr().err.strip() == "cvlancli: --timeout must be 0.05-10 seconds"
