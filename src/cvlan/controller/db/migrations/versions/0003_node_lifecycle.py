"""node lifecycle: ephemeral tokens and nodes, key expiry policy

- enrollment_tokens.ephemeral, nodes.ephemeral: a node enrolled with an ephemeral token is removed by
  the controller (its address quarantined like a deleted node's) once it has been offline longer
  than the setting ephemeral_offline_s.
- tenants.node_cert_lifetime_s: the lifetime of the node certificates the tenant's nodes get (NULL:
  the controller's node_cert_lifetime_s).
- nodes.key_expiry_disabled: the node's certificates are issued for ten years (servers); it is still
  refused at once when disabled or deleted.

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
    with op.batch_alter_table("enrollment_tokens") as b:
        b.add_column(sa.Column("ephemeral", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("nodes") as b:
        b.add_column(sa.Column("ephemeral", sa.Boolean(), nullable=False, server_default=sa.false()))
        b.add_column(
            sa.Column("key_expiry_disabled", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("tenants") as b:
        b.add_column(sa.Column("node_cert_lifetime_s", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tenants") as b:
        b.drop_column("node_cert_lifetime_s")
    with op.batch_alter_table("nodes") as b:
        b.drop_column("key_expiry_disabled")
        b.drop_column("ephemeral")
    with op.batch_alter_table("enrollment_tokens") as b:
        b.drop_column("ephemeral")
