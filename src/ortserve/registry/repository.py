"""Queries over a caller's Session; everything returned is a frozen record, never an ORM object."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from ortserve.records import (
    AuditEventRecord,
    BatchingSettings,
    ModelRecord,
    ModelVersionRecord,
    ProviderSpec,
    SessionSettings,
    VersionState,
)
from ortserve.registry.orm import AuditEvent, Model, ModelVersion, RegistryRevision, utcnow
from ortserve.signature import Signature
from ortserve.toolkit.recipes import recipe_from_json
from ortserve.toolkit.report import EvaluationReport

PathFor = Callable[[str], str]


def model_id(session: Session, name: str) -> int | None:
    found: int | None = session.scalar(sa.select(Model.id).where(Model.name == name))
    return found


def ensure_model(session: Session, name: str, description: str) -> int:
    """The model's id, inserting the row if absent (concurrent inserters do not conflict)."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    stmt = insert(Model).values(name=name, description=description, created_at=utcnow(), next_version=1)
    session.execute(stmt.on_conflict_do_nothing(index_elements=["name"]))
    found = model_id(session, name)
    assert found is not None
    return found


def version_with_bytes(session: Session, model: int, sha256: str) -> ModelVersion | None:
    """The model's oldest version (retired ones included) whose blob is `sha256`."""
    stmt = (
        sa.select(ModelVersion)
        .where(ModelVersion.model_id == model, ModelVersion.sha256 == sha256)
        .order_by(ModelVersion.version)
        .limit(1)
    )
    return session.scalars(stmt).one_or_none()


def allocate_version(session: Session, model: int) -> int:
    """The next version number of `model`; the row stays locked until the transaction ends."""
    stmt = (
        sa.update(Model)
        .where(Model.id == model)
        .values(next_version=Model.next_version + 1)
        .returning(Model.next_version)
    )
    return int(session.execute(stmt).scalar_one()) - 1


def insert_version(session: Session, row: ModelVersion) -> ModelVersion:
    session.add(row)
    session.flush()
    return row


def add_audit(
    session: Session,
    *,
    actor: str,
    action: str,
    model: str,
    version: int | None,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> None:
    event = AuditEvent(at=utcnow(), actor=actor, action=action, model=model, version=version)
    event.before, event.after = before, after
    session.add(event)
    session.flush()


# The PostgreSQL channel on which committed registry changes are announced (payload: the revision).
CHANGES_CHANNEL = "ortserve_registry"


def bump_revision(session: Session) -> int:
    """The next registry revision; on PostgreSQL also announced to every listening replica when the
    transaction commits (NOTIFY is transactional: a rolled-back change announces nothing)."""
    stmt = (
        sa.update(RegistryRevision)
        .where(RegistryRevision.id == 1)
        .values(revision=RegistryRevision.revision + 1)
        .returning(RegistryRevision.revision)
    )
    revision = int(session.execute(stmt).scalar_one())
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sa.select(sa.func.pg_notify(CHANGES_CHANNEL, str(revision))))
    return revision


def revision(session: Session) -> int:
    return int(session.scalar(sa.select(RegistryRevision.revision).where(RegistryRevision.id == 1)) or 0)


def version_row(session: Session, model: int, version: int) -> ModelVersion | None:
    stmt = sa.select(ModelVersion).where(ModelVersion.model_id == model, ModelVersion.version == version)
    return session.scalars(stmt).one_or_none()


def version_numbers(session: Session, model: int) -> list[int]:
    stmt = (
        sa.select(ModelVersion.version).where(ModelVersion.model_id == model).order_by(ModelVersion.version)
    )
    return list(session.scalars(stmt))


def versions(
    session: Session, path_for: PathFor, *, model_ids: Sequence[int] | None = None, live_only: bool = False
) -> list[ModelVersionRecord]:
    """Versions ordered by model name then number; only those of `model_ids` when given."""
    stmt = sa.select(ModelVersion, Model.name).join(Model).order_by(Model.name, ModelVersion.version)
    if model_ids is not None:
        stmt = stmt.where(ModelVersion.model_id.in_(model_ids))
    if live_only:
        stmt = stmt.where(ModelVersion.state != VersionState.RETIRED.value)
    return [version_record(row, name, path_for) for row, name in session.execute(stmt)]


def models(
    session: Session, path_for: PathFor, *, after: str = "", limit: int | None = None
) -> list[ModelRecord]:
    """Models by name, those named after `after` (keyset pagination), with all their versions."""
    stmt = sa.select(Model).where(Model.name > after).order_by(Model.name)
    if limit is not None:
        stmt = stmt.limit(limit)
    rows = list(session.scalars(stmt))
    by_model: dict[str, list[ModelVersionRecord]] = {row.name: [] for row in rows}
    for record in versions(session, path_for, model_ids=[row.id for row in rows]):
        by_model[record.model].append(record)
    return [model_record(row, by_model[row.name]) for row in rows]


def model_record(row: Model, records: Sequence[ModelVersionRecord]) -> ModelRecord:
    return ModelRecord(
        name=row.name, description=row.description, created_at=as_utc(row.created_at), versions=tuple(records)
    )


def version_record(row: ModelVersion, model: str, path_for: PathFor) -> ModelVersionRecord:
    return ModelVersionRecord(
        model=model,
        version=row.version,
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        opset=row.opset,
        producer=row.producer,
        signature=Signature.from_json(row.signature),
        providers=tuple(ProviderSpec.from_json(p) for p in row.providers),
        batching=BatchingSettings.from_json(row.batching),
        session=SessionSettings.from_json(row.session),
        state=VersionState(row.state),
        error=row.error,
        description=row.description,
        labels=_frozen(row.labels),
        created_by=row.created_by,
        created_at=as_utc(row.created_at),
        path=path_for(row.sha256),
        derived_from=row.derived_from,
        recipe=recipe_from_json(row.recipe) if row.recipe is not None else None,
        report=EvaluationReport.from_json(row.report) if row.report is not None else None,
        samples_sha256=row.samples_sha256,
        sample_rows=row.sample_rows,
    )


def audit_events(session: Session, model: str | None = None, limit: int = 100) -> list[AuditEventRecord]:
    """The newest `limit` events, newest first; only those of `model` when given."""
    stmt = sa.select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if model is not None:
        stmt = stmt.where(AuditEvent.model == model)
    return [
        AuditEventRecord(
            at=as_utc(e.at),
            actor=e.actor,
            action=e.action,
            model=e.model,
            version=e.version,
            before=e.before,
            after=e.after,
        )
        for e in session.scalars(stmt)
    ]


def as_utc(at: datetime) -> datetime:
    """SQLite returns naive datetimes; every stored time is UTC."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _frozen(data: Mapping[str, Any]) -> Mapping[str, str]:
    return MappingProxyType({str(k): str(v) for k, v in data.items()})


def model(session: Session, name: str, path_for: PathFor) -> ModelRecord | None:
    row = session.scalars(sa.select(Model).where(Model.name == name)).one_or_none()
    if row is None:
        return None
    return model_record(row, versions(session, path_for, model_ids=[row.id]))


def referenced_sha256(session: Session) -> set[str]:
    """The blobs versions name: their model files and their sample inputs."""
    models = set(session.scalars(sa.select(ModelVersion.sha256).distinct()))
    samples = sa.select(ModelVersion.samples_sha256).where(ModelVersion.samples_sha256 != "").distinct()
    return models | set(session.scalars(samples))
