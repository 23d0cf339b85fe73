"""subnet routes and exit nodes

- node_routes: one row per route a node advertises (the exit-node offer as 0.0.0.0/0), with its
  approval and, for a route that can never be used, why it is refused.
- route_rules: per-CVLAN auto-approval rules (kind "route" with a prefix, or "exit"; optional tag).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 07:05:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _fk(table: str, col: str, ref: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [col], [f"{ref}.id"], name=op.f(f"fk_{table}_{col}_{ref}"), ondelete="CASCADE"
    )


def upgrade() -> None:
    op.create_table(
        "node_routes",
        sa.Column("id", ID, nullable=False),
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("cvlan_id", ID, nullable=False),
        sa.Column("node_id", ID, nullable=False),
        sa.Column("prefix", sa.String(length=43), nullable=False),
        sa.Column("advertised", sa.Boolean(), nullable=False),
        sa.Column("approved", sa.Boolean(), nullable=False),
        sa.Column("refused", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("approved_at", sa.DateTime(timezone=True), nullable=True),
        _fk("node_routes", "tenant_id", "tenants"),
        _fk("node_routes", "cvlan_id", "cvlans"),
        _fk("node_routes", "node_id", "nodes"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_node_routes")),
        sa.UniqueConstraint("node_id", "prefix", name=op.f("uq_node_routes_node_id")),
    )
    with op.batch_alter_table("node_routes") as b:
        b.create_index("ix_node_routes_cvlan", ["cvlan_id"], unique=False)
        b.create_index(b.f("ix_node_routes_tenant_id"), ["tenant_id"], unique=False)
    op.create_table(
        "route_rules",
        sa.Column("id", ID, nullable=False),
        sa.Column("tenant_id", ID, nullable=False),
        sa.Column("cvlan_id", ID, nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("prefix", sa.String(length=43), nullable=False),
        sa.Column("tag", sa.String(length=63), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        _fk("route_rules", "tenant_id", "tenants"),
        _fk("route_rules", "cvlan_id", "cvlans"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_route_rules")),
        sa.UniqueConstraint("cvlan_id", "kind", "prefix", "tag", name=op.f("uq_route_rules_cvlan_id")),
    )
    with op.batch_alter_table("route_rules") as b:
        b.create_index(b.f("ix_route_rules_tenant_id"), ["tenant_id"], unique=False)


def downgrade() -> None:
    op.drop_table("route_rules")
    op.drop_table("node_routes")
