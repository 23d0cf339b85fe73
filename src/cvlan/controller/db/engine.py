"""Engine and session factory for SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def create_engine(url: str, pool_size: int = 10) -> AsyncEngine:
    """Create the async engine. SQLite gets WAL, a busy timeout and writer-first transactions."""
    if is_sqlite(url):
        path = make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, pool_size=pool_size, max_overflow=0, pool_timeout=60)
        _sqlite_pragmas(engine)
        return engine
    # No pre-ping: it costs a round trip per transaction on the hot path. A connection that died
    # (database restarted) fails its request once with 503 and is replaced by the pool.
    return create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_recycle=600)


def _sqlite_pragmas(engine: AsyncEngine) -> None:
    # SQLite allows one writer; BEGIN IMMEDIATE takes the write lock up front so two
    # transactions never deadlock upgrading from a read lock (SQLITE_BUSY without waiting).
    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_conn: Any, _rec: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade_sync(url: str) -> None:
    """Run every migration up to head (blocking; call from a thread)."""
    from alembic import command

    command.upgrade(alembic_config(url), "head")


async def upgrade(url: str) -> None:
    import asyncio

    await asyncio.to_thread(upgrade_sync, url)
