"""Engine choice and the clear errors of engines that cannot run here."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cvlan.cvland.__main__ import main as cvland_main
from cvlan.dataplane import engine as eng


def test_auto_prefers_the_kernel_where_it_has_wireguard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eng, "kernel_has_wireguard", lambda: True)
    assert eng.pick_engine("auto") == "kernel"
    monkeypatch.setattr(eng, "kernel_has_wireguard", lambda: False)
    assert eng.pick_engine("auto") == "wireguard-go"
    assert eng.pick_engine("boringtun") == "boringtun"
    with pytest.raises(
        eng.EngineError, match="^engine 'vpp': expected one of auto, wireguard-go, boringtun, kernel$"
    ):
        eng.pick_engine("vpp")


def test_engines_are_built_for_the_interface() -> None:
    wg = eng.make_engine("wireguard-go", "cvl7")
    assert isinstance(wg, eng.UserspaceEngine) and wg.name == "wireguard-go"
    assert str(wg.sock) == "/var/run/wireguard/cvl7.sock"
    assert isinstance(eng.make_engine("kernel", "cvl7"), eng.KernelEngine)
    assert eng.make_engine("boringtun", "cvl7").name == "boringtun"


@pytest.mark.skipif(shutil.which("boringtun-cli") is not None, reason="boringtun is installed here")
def test_missing_engine_binary_is_a_one_line_error() -> None:
    e = eng.make_engine("boringtun", "cvl7")
    with pytest.raises(eng.EngineError, match="^start boringtun: boringtun-cli is not installed$"):
        e.start()
    assert not e.alive()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--interface", "a-name-longer-than-15"], "cvland: invalid setting interface:"),
        (["--interface", "bad name"], "cvland: invalid setting interface:"),
    ],
)
def test_cvland_refuses_bad_settings_with_status_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cvland_main(argv) == 2
    assert capsys.readouterr().err.startswith(message)


def test_cvland_on_a_host_without_wireguard_exits_2_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Neither the kernel module nor wireguard-go: the packaged unit must see status 2 (not restarted)
    # and one line naming the fix, before cvland touches the host (no state dir is made).
    monkeypatch.setattr(eng, "kernel_has_wireguard", lambda: False)
    monkeypatch.setenv("PATH", str(tmp_path))
    state = tmp_path / "state"
    assert cvland_main(["--state-dir", str(state), "--socket", str(tmp_path / "s.sock")]) == 2
    err = capsys.readouterr().err
    assert err == f"cvland: {eng.NO_WIREGUARD}\n"
    assert not state.exists()
