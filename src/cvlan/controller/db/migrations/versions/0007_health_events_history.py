"""peer health events and history

- health_events: a pair's degradations and recoveries (relay fallback, loss, a node no peer
  reaches, and back), as the controller that took the report found them.
- health_samples: a CVLAN's pairs per state and median round trip, at most one a minute.

Both are read by every controller process and kept for 24 h, events at most 1,000 per CVLAN; the
controller prunes them (docs/HEALTH.md).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 10:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _owner_columns(table: str) -> list[sa.Column[int]]:
    return [
        sa.Column("id", ID, primary_key=True),
        sa.Column(
            "tenant_id",
            ID,
            sa.ForeignKey("tenants.id", ondelete="CASCADE", name=f"fk_{table}_tenant_id_tenants"),
            nullable=False,
        ),
        sa.Column(
            "cvlan_id",
            ID,
            sa.ForeignKey("cvlans.id", ondelete="CASCADE", name=f"fk_{table}_cvlan_id_cvlans"),
            nullable=False,
        ),
    ]


def upgrade() -> None:
    op.create_table(
        "health_events",
        *_owner_columns("health_events"),
        sa.Column("at", TS, nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("node_id", ID, nullable=False),
        sa.Column("peer_id", ID, nullable=False),
        sa.Column("detail", sa.String(100), nullable=False),
    )
    op.create_index("ix_health_events_tenant_time", "health_events", ["tenant_id", "at"])
    op.create_index("ix_health_events_cvlan_time", "health_events", ["cvlan_id", "at"])
    op.create_index("ix_health_events_time", "health_events", ["at"])
    op.create_table(
        "health_samples",
        *_owner_columns("health_samples"),
        sa.Column("at", TS, nullable=False),
        sa.Column("down", sa.Integer(), nullable=False),
        sa.Column("lossy", sa.Integer(), nullable=False),
        sa.Column("relay", sa.Integer(), nullable=False),
        sa.Column("ok", sa.Integer(), nullable=False),
        sa.Column("unknown", sa.Integer(), nullable=False),
        sa.Column("median_rtt_ms", sa.Float(), nullable=True),
    )
    op.create_index("ix_health_samples_cvlan_time", "health_samples", ["cvlan_id", "at"])
    op.create_index("ix_health_samples_time", "health_samples", ["at"])


def downgrade() -> None:
    op.drop_table("health_samples")
    op.drop_table("health_events")
