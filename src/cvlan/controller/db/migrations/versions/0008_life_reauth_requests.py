"""Re-authentication approved by an admin: a node whose certificate expired asks without a token

- node_reauth_requests: one a node, for the certificate it presented (pending, approved, rejected),
  who decided and when.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 10:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "node_reauth_requests",
        sa.Column("node_id", ID, sa.ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("tenant_id", ID, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("cert_serial", sa.String(64), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("requested_at", TS, nullable=False),
        sa.Column("last_attempt_at", TS, nullable=False),
        sa.Column("decided_by", sa.String(300), nullable=False, server_default=""),
        sa.Column("decided_at", TS, nullable=True),
    )
    op.create_index("ix_node_reauth_requests_tenant_id", "node_reauth_requests", ["tenant_id"])


def downgrade() -> None:
    op.drop_table("node_reauth_requests")
