"""Pointing the host's resolver at cvland's for the overlay names (split DNS), and undoing it.

Two ways (docs/DNS.md):
* systemd-resolved, where it runs: per-link DNS server and domains on the WireGuard interface
  (`resolvectl dns/domain/default-route`): only the overlay domain, the CVLAN's zone (also the search
  domain) and the forwarders' domains go to cvland; everything else is untouched. `resolvectl revert`
  (or the link's removal) undoes it.
* /etc/resolv.conf elsewhere: the original is saved in cvland's state dir first (content, or the
  symlink it was), then the file lists cvland's resolver first, the original nameservers after it
  (so glibc falls back to them if cvland's resolver does not answer), and the CVLAN's zone first in
  the search list. restore() puts the original back byte for byte, unless someone else has rewritten
  the file since (then theirs is kept). A backup found at start means the last run crashed: restore.
The file is rewritten in place when it is a regular file, because inside `ip netns exec` it is a bind
mount that cannot be renamed over."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cvlan.common.files import write_atomic

log = logging.getLogger(__name__)

MARKER = "# Written by cvland (CVLAN)"
BACKUP = "resolv.conf.orig.json"
RESOLVED_DIR = Path("/run/systemd/resolve")
MAXNS = 3
"""glibc reads at most three nameserver lines."""


class HostDnsError(Exception):
    """The host's resolver could not be configured (one line)."""


@dataclass(frozen=True)
class SplitDns:
    ifname: str
    resolver: str
    zone: str
    """The CVLAN's zone: search domain (short names) and routed to the resolver."""
    routed: tuple[str, ...]
    """More domains routed to the resolver: the overlay domain, the forwarders' domains."""


class HostDns(Protocol):
    mode: str

    def apply(self, cfg: SplitDns) -> None: ...
    def restore(self) -> None: ...
    def upstreams(self) -> tuple[str, ...]: ...


def nameservers(text: str) -> list[str]:
    """The nameserver addresses of resolv.conf text, in order."""
    out = []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            out.append(words[1])
    return out


class ResolvConf:
    """The /etc/resolv.conf way (see the module docstring)."""

    mode = "resolv.conf"

    def __init__(self, path: Path, state_dir: Path) -> None:
        self.path = path
        self.backup = state_dir / BACKUP
        self._upstreams: tuple[str, ...] = ()

    def _saved(self) -> dict[str, str] | None:
        try:
            data = json.loads(self.backup.read_text())
        except FileNotFoundError:
            return None
        except ValueError as e:
            raise HostDnsError(f"{self.backup}: unreadable backup of {self.path}: {e}") from None
        return data if isinstance(data, dict) else None

    def _save_original(self) -> dict[str, str]:
        saved = {"content": "", "symlink": "", "missing": ""}
        if self.path.is_symlink():
            saved["symlink"] = os.readlink(self.path)
        if self.path.exists():
            saved["content"] = self.path.read_text()
        elif not saved["symlink"]:
            saved["missing"] = "1"
        if MARKER in saved["content"]:
            raise HostDnsError(f"{self.path} is cvland's own but no backup of the original is left")
        write_atomic(self.backup, json.dumps(saved), 0o600)
        return saved

    def apply(self, cfg: SplitDns) -> None:
        saved = self._saved() or self._save_original()
        original = saved["content"]
        self._upstreams = tuple(a for a in nameservers(original) if a != cfg.resolver)
        self._write(render(original, cfg))

    def _write(self, text: str) -> None:
        if self.path.is_symlink() or not self.path.exists():
            tmp = self.path.with_name(f".{self.path.name}.cvland")
            tmp.write_text(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
            return
        with open(self.path, "r+") as f:  # in place: a bind mount cannot be renamed over
            f.truncate(0)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    def restore(self) -> None:
        saved = self._saved()
        if saved is None:
            return
        try:
            current = self.path.read_text() if self.path.exists() else ""
        except OSError:
            current = ""
        if MARKER not in current:
            log.warning("%s was changed by someone else since cvland wrote it; keeping theirs", self.path)
        elif saved.get("symlink"):
            tmp = self.path.with_name(f".{self.path.name}.cvland")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            os.symlink(saved["symlink"], tmp)
            os.replace(tmp, self.path)
        elif saved.get("missing"):
            self.path.unlink()
        else:
            self._write(saved["content"])
        self.backup.unlink()
        self._upstreams = ()

    def upstreams(self) -> tuple[str, ...]:
        if not self._upstreams:
            saved = self._saved()
            if saved is not None:
                self._upstreams = tuple(nameservers(saved.get("content", "")))
        return self._upstreams


def render(original: str, cfg: SplitDns) -> str:
    """resolv.conf text: cvland's resolver first, the original nameservers after it, the zone first
    in the search list, the original options kept."""
    servers = [cfg.resolver] + [a for a in nameservers(original) if a != cfg.resolver]
    search = [cfg.zone]
    options: list[str] = []
    for line in original.splitlines():
        words = line.split()
        if words and words[0] in ("search", "domain"):
            search += [w for w in words[1:] if w not in search]
        elif words and words[0] == "options":
            options.append(line.strip())
    lines = [
        f"{MARKER}: names under {' '.join((cfg.zone, *cfg.routed))} go to the node's resolver,",
        "# everything else to the original nameservers. The original is restored by `cvlancli down`,",
        "# when cvland stops, on uninstall, and on the next start after a crash.",
        *(f"nameserver {a}" for a in servers[:MAXNS]),
        f"search {' '.join(search[:6])}",
        *options,
    ]
    return "\n".join(lines) + "\n"


Runner = Callable[[Sequence[str]], None]


def _run(argv: Sequence[str]) -> None:
    try:
        subprocess.run(list(argv), check=True, capture_output=True, text=True, timeout=10)
    except subprocess.CalledProcessError as e:
        raise HostDnsError(f"{' '.join(argv)}: {(e.stderr or '').strip() or e.returncode}") from None
    except (OSError, subprocess.TimeoutExpired) as e:
        raise HostDnsError(f"{' '.join(argv)}: {e}") from None


class Resolved:
    """The systemd-resolved way: per-link settings on the WireGuard interface (resolvectl)."""

    mode = "systemd-resolved"

    def __init__(self, run: Runner = _run, upstream_file: Path = RESOLVED_DIR / "resolv.conf") -> None:
        self._run = run
        self._ifname = ""
        self._upstream_file = upstream_file

    def apply(self, cfg: SplitDns) -> None:
        self._ifname = cfg.ifname
        self._run(["resolvectl", "dns", cfg.ifname, cfg.resolver])
        self._run(["resolvectl", "domain", cfg.ifname, cfg.zone, *(f"~{d}" for d in cfg.routed)])
        self._run(["resolvectl", "default-route", cfg.ifname, "false"])

    def restore(self) -> None:
        if self._ifname:
            with contextlib.suppress(HostDnsError):  # the link may be gone already, and its settings with it
                self._run(["resolvectl", "revert", self._ifname])
            self._ifname = ""

    def upstreams(self) -> tuple[str, ...]:
        """resolved's own upstream servers (queries outside our domains rarely reach cvland)."""
        try:
            return tuple(nameservers(self._upstream_file.read_text()))
        except OSError:
            return ()


def resolved_runs() -> bool:
    """systemd-resolved is running and resolvectl is installed."""
    return (RESOLVED_DIR / "io.systemd.Resolve").exists() and shutil.which("resolvectl") is not None


def make_host_dns(mode: str, resolv_conf: Path, state_dir: Path) -> HostDns | None:
    """The backend for a cvland setting dns_mode: auto, systemd-resolved, resolv.conf or off (None)."""
    if mode == "off":
        return None
    if mode == "systemd-resolved" or (mode == "auto" and resolved_runs()):
        return Resolved()
    return ResolvConf(resolv_conf, state_dir)
