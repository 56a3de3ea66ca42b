"""Rollout: aliases and traffic policies.

Revision ID: 0002
Revises: 0001
Create Date: 2026-01-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    # New tables only: plain CREATE TABLE works on SQLite too, no batch copy of existing tables.
    op.create_table(
        "aliases",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("model_id", BigId, sa.ForeignKey("models.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("previous_version", sa.Integer, nullable=True),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("updated_by", sa.String(256), nullable=False),
        sa.UniqueConstraint("model_id", "name", name="uq_aliases_model_name"),
    )
    op.create_table(
        "traffic_policies",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("model_id", BigId, sa.ForeignKey("models.id", ondelete="CASCADE"), nullable=False),
        sa.Column("entries", sa.JSON, nullable=False),
        sa.Column("sticky", sa.Boolean, nullable=False),
        sa.Column("shadow_target", sa.String(64), nullable=False),
        sa.Column("shadow_share", sa.Double, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("updated_by", sa.String(256), nullable=False),
        sa.UniqueConstraint("model_id", name="uq_traffic_policies_model_id"),
    )


def downgrade() -> None:
    op.drop_table("traffic_policies")
    op.drop_table("aliases")
