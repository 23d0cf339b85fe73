"""`--version` for every command: one flag, one version string (the project's, from `cvlan.__version__`)."""

from __future__ import annotations

import argparse

from cvlan import __version__


def add_version_flag(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add `--version` to p (prints "PROG VERSION" and exits 0); return p for chaining."""
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p
