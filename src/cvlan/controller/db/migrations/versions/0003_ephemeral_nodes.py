"""enrollment tokens and nodes: ephemeral flag

A node enrolled with an ephemeral token is removed by the controller (its address quarantined like a
deleted node's) once it has been offline longer than the setting ephemeral_offline_s.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06 04:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("enrollment_tokens", "nodes"):
        with op.batch_alter_table(table) as b:
            b.add_column(sa.Column("ephemeral", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    for table in ("enrollment_tokens", "nodes"):
        with op.batch_alter_table(table) as b:
            b.drop_column("ephemeral")
