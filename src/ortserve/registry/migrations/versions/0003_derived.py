"""Derived versions and sample inputs: a version's source, recipe, evaluation report and samples blob.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("derived_from", "recipe", "report", "samples_sha256", "sample_rows")


def upgrade() -> None:
    # ADD COLUMN (nullable, or NOT NULL with a server default for the existing rows) needs no
    # batch copy of the table on SQLite.
    op.add_column("model_versions", sa.Column("derived_from", sa.Integer, nullable=True))
    op.add_column("model_versions", sa.Column("recipe", sa.JSON, nullable=True))
    op.add_column("model_versions", sa.Column("report", sa.JSON, nullable=True))
    op.add_column(
        "model_versions", sa.Column("samples_sha256", sa.String(64), nullable=False, server_default="")
    )
    op.add_column("model_versions", sa.Column("sample_rows", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        for name in reversed(COLUMNS):
            batch.drop_column(name)
