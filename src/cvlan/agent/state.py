"""cvlan-ctrl's persistent identity: state.db (SQLite, mode 0600) in the state directory.

It holds the WireGuard private key, the TLS key and certificate, the CA, the server URL and the
node's registration, so a restart resumes without a token. Nothing here is ever logged."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import MISSING, Field, asdict, dataclass, fields
from pathlib import Path

STATE_FILE = "state.db"


@dataclass
class Identity:
    server: str
    ca_pem: str
    wg_private_key: str
    """64 hex characters."""
    tls_key_pem: str
    cert_pem: str
    node_id: int
    node_name: str
    address: str
    tenant_id: int
    cvlan_id: int
    cvlan_name: str
    cvlan_subnet: str
    cert_obtained_at: float = 0.0
    """Unix time the certificate was received (renewal is due at 2/3 of the time from here to expiry)."""


class StateError(Exception):
    pass


class StateStore:
    """A tiny key-value table; every save is one transaction."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.path = state_dir / STATE_FILE

    def _open(self) -> sqlite3.Connection:
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not self.path.exists():
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            os.chmod(self.path, 0o600)
            db = sqlite3.connect(self.path, timeout=10)
        except OSError as e:
            raise StateError(f"cannot open state {self.path}: {e.strerror or e}") from e
        except sqlite3.Error as e:
            raise StateError(f"cannot open state {self.path}: {e}") from e
        db.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        return db

    def load(self) -> Identity | None:
        if not self.path.exists():
            return None
        with contextlib.closing(self._open()) as db:
            try:
                rows = dict(db.execute("SELECT key, value FROM kv").fetchall())
            except sqlite3.Error as e:
                raise StateError(f"state {self.path} is unreadable: {e}") from e
        if not rows:
            return None
        try:
            vals = {
                f.name: _value(f.type, rows[f.name])
                for f in fields(Identity)
                if f.name in rows or _required(f)
            }
        except (KeyError, ValueError) as e:
            raise StateError(f"state {self.path} is incomplete ({e}); remove it and enrol again") from e
        return Identity(**vals)  # type: ignore[arg-type]

    def save(self, ident: Identity) -> None:
        with contextlib.closing(self._open()) as db, db:
            db.executemany(
                "INSERT INTO kv(key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [(k, str(v)) for k, v in asdict(ident).items()],
            )

    def clear(self) -> None:
        with contextlib.closing(self._open()) as db, db:
            db.execute("DELETE FROM kv")


def _value(typ: object, text: str) -> object:
    if typ in ("int", int):
        return int(text)
    if typ in ("float", float):
        return float(text)
    return text


def _required(f: Field[object]) -> bool:
    return f.default is MISSING
