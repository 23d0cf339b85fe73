"""OpenID Connect sign-in: identities, group-to-role mappings, pending sign-ins, per-tenant policy

- oidc_identities: a user's (issuer, subject) at an identity provider, with the groups of the last
  sign-in.
- oidc_group_roles: in a tenant, an identity provider's group grants a role.
- oidc_pending: sign-ins under way (state hash -> nonce, PKCE verifier, device code); one use each.
- memberships.via_oidc: the role came from a group mapping (re-evaluated at every sign-in).
- users.session_epoch: raised to end all of a user's web sessions.
- api_tokens.user_id: a user's own token from `cvlan login` (roles read at each use).
- tenants.local_passwords_disabled: the tenant's members sign in only through an identity provider.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 07:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "oidc_identities",
        sa.Column("id", ID, primary_key=True),
        sa.Column("user_id", ID, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("provider", sa.String(63), nullable=False),
        sa.Column("issuer", sa.String(300), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("groups", sa.JSON(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("last_signin_at", TS, nullable=False),
        sa.UniqueConstraint("issuer", "subject", name="uq_oidc_identities_issuer"),
    )
    op.create_index("ix_oidc_identities_user_id", "oidc_identities", ["user_id"])
    op.create_table(
        "oidc_group_roles",
        sa.Column("id", ID, primary_key=True),
        sa.Column("tenant_id", ID, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("provider", sa.String(63), nullable=False),
        sa.Column("group_name", sa.String(255), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("tenant_id", "provider", "group_name", name="uq_oidc_group_roles_tenant_id"),
    )
    op.create_index("ix_oidc_group_roles_tenant_id", "oidc_group_roles", ["tenant_id"])
    op.create_table(
        "oidc_pending",
        sa.Column("state_hash", sa.LargeBinary(32), primary_key=True),
        sa.Column("provider", sa.String(63), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("expires_at", TS, nullable=False),
    )
    op.create_index("ix_oidc_pending_expires_at", "oidc_pending", ["expires_at"])
    with op.batch_alter_table("memberships") as b:
        b.add_column(sa.Column("via_oidc", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("users") as b:
        b.add_column(sa.Column("session_epoch", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("api_tokens") as b:
        b.add_column(sa.Column("user_id", ID, nullable=True))
        b.create_foreign_key("fk_api_tokens_user_id_users", "users", ["user_id"], ["id"], ondelete="CASCADE")
        b.create_index("ix_api_tokens_user_id", ["user_id"])
    with op.batch_alter_table("tenants") as b:
        b.add_column(
            sa.Column("local_passwords_disabled", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("tenants") as b:
        b.drop_column("local_passwords_disabled")
    with op.batch_alter_table("api_tokens") as b:
        b.drop_index("ix_api_tokens_user_id")
        b.drop_constraint("fk_api_tokens_user_id_users", type_="foreignkey")
        b.drop_column("user_id")
    with op.batch_alter_table("users") as b:
        b.drop_column("session_epoch")
    with op.batch_alter_table("memberships") as b:
        b.drop_column("via_oidc")
    op.drop_table("oidc_pending")
    op.drop_table("oidc_group_roles")
    op.drop_table("oidc_identities")
