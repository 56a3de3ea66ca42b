"""SQLAlchemy 2.0 typed tables of the registry. Only registry/ imports this module."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# BIGINT on PostgreSQL; INTEGER on SQLite, where only INTEGER PRIMARY KEY autoincrements.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

JsonDict = dict[str, Any]
JsonList = list[Any]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {
        JsonDict: sa.JSON(),
        JsonList: sa.JSON(),
        datetime: sa.DateTime(timezone=True),
    }


class Model(Base):
    __tablename__ = "models"
    __table_args__ = (sa.UniqueConstraint("name", name="uq_models_name"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(128))
    description: Mapped[str] = mapped_column(sa.Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The number the next registered version gets; bumped atomically with UPDATE ... RETURNING.
    next_version: Mapped[int] = mapped_column(default=1)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (sa.UniqueConstraint("model_id", "version", name="uq_model_versions_model_version"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    model_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("models.id", ondelete="CASCADE"), index=True)
    version: Mapped[int]
    sha256: Mapped[str] = mapped_column(sa.String(64))
    size_bytes: Mapped[int] = mapped_column(sa.BigInteger)
    opset: Mapped[int]
    producer: Mapped[str] = mapped_column(sa.String(256), default="")
    signature: Mapped[JsonDict]
    providers: Mapped[JsonList]
    batching: Mapped[JsonDict]
    session: Mapped[JsonDict]
    state: Mapped[str] = mapped_column(sa.String(16))
    error: Mapped[str] = mapped_column(sa.Text, default="")
    description: Mapped[str] = mapped_column(sa.Text, default="")
    labels: Mapped[JsonDict]
    created_by: Mapped[str] = mapped_column(sa.String(256), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Derived versions: the source's version number, the recipe and the evaluation report.
    derived_from: Mapped[int | None]
    recipe: Mapped[JsonDict | None]
    report: Mapped[JsonDict | None]
    # The .npz blob of the sample inputs stored with the version ("" and 0: none).
    samples_sha256: Mapped[str] = mapped_column(sa.String(64), default="", server_default="")
    sample_rows: Mapped[int] = mapped_column(default=0, server_default="0")


class RegistryRevision(Base):
    """A single row; its revision is bumped in the same transaction as every registry change."""

    __tablename__ = "registry_revision"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    revision: Mapped[int] = mapped_column(sa.BigInteger, default=0)


class AuditEvent(Base):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(sa.String(256), default="")
    action: Mapped[str] = mapped_column(sa.String(64))
    model: Mapped[str] = mapped_column(sa.String(128), index=True)
    version: Mapped[int | None]
    before: Mapped[JsonDict | None]
    after: Mapped[JsonDict | None]


class Alias(Base):
    """A named pointer to one version of a model (`production`, `canary`, ...)."""

    __tablename__ = "aliases"
    __table_args__ = (sa.UniqueConstraint("model_id", "name", name="uq_aliases_model_name"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    model_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("models.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(sa.String(64))
    version: Mapped[int]
    # What the alias pointed to before its last change; a rollback returns to it.
    previous_version: Mapped[int | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str] = mapped_column(sa.String(256), default="")


class TrafficPolicyRow(Base):
    """At most one per model: weighted entries [{target, weight}], stickiness and the shadow copy."""

    __tablename__ = "traffic_policies"
    __table_args__ = (sa.UniqueConstraint("model_id", name="uq_traffic_policies_model_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    model_id: Mapped[int] = mapped_column(BigId, sa.ForeignKey("models.id", ondelete="CASCADE"))
    entries: Mapped[JsonList]
    sticky: Mapped[bool] = mapped_column(default=False)
    shadow_target: Mapped[str] = mapped_column(sa.String(64), default="")
    shadow_share: Mapped[float] = mapped_column(sa.Double, default=0.0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str] = mapped_column(sa.String(256), default="")
