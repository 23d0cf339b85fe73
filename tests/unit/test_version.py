"""Every console script answers --version with its name and the project's version."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import pytest

import cvlan

SCRIPTS = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_command_answers_version(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    module, func = SCRIPTS[name].split(":")
    main = getattr(importlib.import_module(module), func)
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"{name} {cvlan.__version__}\n"
