"""dns: tenant-defined records and split-DNS forwarders per CVLAN

- dns_records: (cvlan, name relative to the CVLAN's zone, type, value in zone-file text, ttl).
- dns_forwarders: (cvlan, domain, JSON list of server addresses).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 07:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _owned(name: str, *cols: sa.Column[object], unique: tuple[str, ...]) -> None:
    op.create_table(
        name,
        sa.Column("id", _ID, nullable=False),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("cvlan_id", _ID, nullable=False),
        *cols,
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f(f"fk_{name}_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["cvlan_id"], ["cvlans.id"], name=op.f(f"fk_{name}_cvlan_id_cvlans"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{name}")),
        sa.UniqueConstraint("cvlan_id", *unique, name=op.f(f"uq_{name}_cvlan_id")),
    )
    op.create_index(op.f(f"ix_{name}_tenant_id"), name, ["tenant_id"], unique=False)


def upgrade() -> None:
    _owned(
        "dns_records",
        sa.Column("name", sa.String(160), nullable=False),
        sa.Column("rtype", sa.String(10), nullable=False),
        sa.Column("value", sa.String(600), nullable=False),
        sa.Column("ttl", sa.Integer(), nullable=False),
        unique=("name", "rtype", "value"),
    )
    _owned(
        "dns_forwarders",
        sa.Column("domain", sa.String(200), nullable=False),
        sa.Column("servers", sa.JSON(), nullable=False),
        unique=("domain",),
    )


def downgrade() -> None:
    op.drop_table("dns_forwarders")
    op.drop_table("dns_records")
