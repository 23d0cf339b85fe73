"""nodes: leave room in each page for liveness updates (PostgreSQL)

Every poll's liveness (last_seen, map_version, health) is written back in batches: at 100,000 nodes
polling every 30 s that is over 3,000 row updates a second. None of those columns is indexed, so
PostgreSQL can keep the new row version in the same page without touching the table's five indexes
(a heap-only tuple update) -- but only if the page has room. With the default fill factor of 100 the
pages are full after registration, every update goes to another page and adds an entry to every
index, and autovacuum then has to clean all of them. A fill factor of 80 keeps a fifth of each page
free for new row versions. SQLite has no such setting; there this migration does nothing.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 02:40:00
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # Applies to pages written from now on; VACUUM FULL would rewrite existing ones.
        op.execute("ALTER TABLE nodes SET (fillfactor = 80)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE nodes RESET (fillfactor)")
