"""The registry service: registrations, reads and state changes, each one database transaction.

Synchronous on purpose: the gRPC layer calls these methods through `asyncio.to_thread`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from ortserve.errors import (
    Aborted,
    FailedPrecondition,
    InvalidInput,
    NotFound,
    ResourceExhausted,
    Unavailable,
    logged,
)
from ortserve.records import (
    PRODUCTION,
    AliasRecord,
    AuditEventRecord,
    BatchingSettings,
    Manifest,
    ModelRecord,
    ModelVersionRecord,
    ProviderSpec,
    RouteSnapshot,
    SessionSettings,
    TrafficEntry,
    TrafficPolicy,
    VersionState,
)
from ortserve.registry import repository as repo
from ortserve.registry import rollout
from ortserve.registry.db import READ_ONLY, check_at_head
from ortserve.registry.orm import Alias, ModelVersion, TrafficPolicyRow, utcnow
from ortserve.registry.paging import DEFAULT_PAGE_SIZE, decode_token, encode_token, page_size_of
from ortserve.runtime.session import check_providers
from ortserve.runtime.validation import ModelInfo, ValidationLimits, validate_model
from ortserve.store import STALE_TEMP_S, BlobStore, BlobUpload, Garbage, hash_file
from ortserve.toolkit import samples as sample_inputs
from ortserve.toolkit.derive import derive_model
from ortserve.toolkit.profile import Profile, profile_model
from ortserve.toolkit.recipes import Fp16, Gate, Quantize, Recipe, describe, recipe_to_json
from ortserve.toolkit.report import EvaluationReport, check_gate
from ortserve.toolkit.sandbox import GiB, SandboxLimits

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")
MAX_CHUNK_BYTES = 1 << 20
STORED_STATES = (VersionState.REGISTERED, VersionState.FAILED, VersionState.RETIRED)

Samples = Mapping[str, np.ndarray]


class Validator(Protocol):
    def __call__(
        self, path: Path, limits: ValidationLimits, /, *, samples: Samples | None = None
    ) -> ModelInfo: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Derivation:
    """Where a derived version comes from: its source version, the recipe and the report."""

    source: int
    recipe: Recipe
    report: EvaluationReport


@dataclass(frozen=True, slots=True, kw_only=True)
class Extras:
    """What a version stores beyond its manifest: its samples blob and, when derived, its origin."""

    samples_sha256: str = ""
    sample_rows: int = 0
    derivation: Derivation | None = None


def check_name(name: str) -> None:
    if not NAME_RE.match(name):
        raise InvalidInput(
            f"model name {name!r} is not valid: use 1 to 128 characters from a-z, 0-9, '.', '_' and '-', "
            "starting with a letter or digit"
        )


class Registry:
    def __init__(
        self,
        engine: sa.Engine,
        store: BlobStore,
        *,
        max_model_bytes: int,
        validate: Validator = validate_model,
        validation_limits: ValidationLimits | None = None,
        job_timeout_s: float = 600.0,
        job_memory_bytes: int = 0,
        custom_op_libraries: tuple[str, ...] = (),
    ):
        self.engine = engine
        self.store = store
        self.max_model_bytes = max_model_bytes
        self._reader = engine.execution_options(**{READ_ONLY: True})
        # SQLite (WAL) keeps one snapshot per read transaction; PostgreSQL's READ COMMITTED does not.
        self._snapshot_reader = (
            self._reader.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            if engine.dialect.name == "postgresql"
            else self._reader
        )
        self._validate = validate
        self._limits = validation_limits or ValidationLimits(max_model_bytes=max_model_bytes)
        # Derivation and profiling jobs run in limited children like validation, for longer.
        self._job_timeout_s = job_timeout_s
        self._job_memory_bytes = job_memory_bytes
        self._custom_op_libraries = custom_op_libraries

    # -- registration -------------------------------------------------------------------------

    def begin_upload(self, manifest: Manifest) -> BlobUpload:
        """Check the manifest and open an upload of its bytes (chunks of at most 1 MiB)."""
        self._check_manifest(manifest)
        return self.store.open_upload(
            expected_size=manifest.size_bytes,
            expected_sha256=manifest.sha256.lower(),
            max_chunk_bytes=MAX_CHUNK_BYTES,
        )

    def finish_upload(
        self, upload: BlobUpload, manifest: Manifest, *, reuse_identical: bool = False
    ) -> ModelVersionRecord:
        """Verify and validate the bytes, commit them to the store, then record the version in one
        transaction: the store never shows bytes whose digest differs, and the registry never
        names a blob the store has not committed. With `reuse_identical`, a version of the model
        with the same bytes (retired ones included) is returned instead of adding one; the check
        runs under the model's lock, so replicas registering one file at once add one version.

        The manifest's samples are checked against the model's signature, run in validation and
        stored as an .npz blob (committed before the row that names it)."""
        return self._finish(upload, manifest, reuse_identical=reuse_identical, derivation=None)

    def _finish(
        self, upload: BlobUpload, manifest: Manifest, *, reuse_identical: bool, derivation: Derivation | None
    ) -> ModelVersionRecord:
        try:
            self._check_manifest(manifest)
            self._check_received(upload, manifest)
            upload.seal()
            info, rows = self._validated(upload.path, manifest.samples)
            upload.commit()
        except BaseException:
            upload.abort()
            raise
        try:  # the blob stays held from garbage collection until its row is committed
            if reuse_identical and (same := self._identical_version(manifest)) is not None:
                return same  # its samples stay; storing the manifest's would leave an orphan blob
            with self._samples_blob(manifest.samples) as stored:
                extras = Extras(samples_sha256=stored, sample_rows=rows, derivation=derivation)
                return self._record_version(manifest, info, reuse_identical, extras)
        finally:
            upload.release()

    def _identical_version(self, manifest: Manifest) -> ModelVersionRecord | None:
        """The version of the manifest's model with its bytes, if any (read without the model's
        lock: `_record_version` checks again under it)."""
        with self._session() as session:
            model_id = repo.model_id(session, manifest.name)
            if model_id is None:
                return None
            same = repo.version_with_bytes(session, model_id, manifest.sha256.lower())
            return None if same is None else repo.version_record(same, manifest.name, self._path_for)

    def _validated(self, path: Path, samples: Samples | None) -> tuple[ModelInfo, int]:
        """The model's info and the rows of its samples, checked against its signature."""
        if not samples:
            return self._validate(path, self._limits), 0
        info = self._validate(path, self._limits, samples=samples)
        return info, sample_inputs.check_samples(info.signature, samples, "sample inputs")

    @contextmanager
    def _samples_blob(self, samples: Samples | None) -> Iterator[str]:
        """Commit the samples' .npz bytes to the store (rewritten even when present, so that a
        garbage collection running now keeps it for its grace period) and hold them from garbage
        collection for the block; their sha256 ("" without samples)."""
        if not samples:
            yield ""
            return
        data = sample_inputs.to_npz(samples)
        sha256 = hashlib.sha256(data).hexdigest()
        upload = self.store.open_upload(
            expected_size=len(data), expected_sha256=sha256, max_chunk_bytes=MAX_CHUNK_BYTES
        )
        try:
            for start in range(0, len(data), MAX_CHUNK_BYTES):
                upload.write(data[start : start + MAX_CHUNK_BYTES])
            upload.seal()
            upload.commit()
        except BaseException:
            upload.abort()
            raise
        try:
            yield sha256
        finally:
            upload.release()

    def register_file(
        self,
        path: Path,
        name: str,
        *,
        description: str = "",
        labels: Mapping[str, str] | None = None,
        providers: Sequence[ProviderSpec] = (),
        batching: BatchingSettings | None = None,
        session: SessionSettings | None = None,
        created_by: str = "",
        reuse_identical: bool = False,
        samples: Samples | None = None,
    ) -> ModelVersionRecord:
        """Register the model file at `path` as the next version of `name` (see `finish_upload`
        for `reuse_identical` and `samples`)."""
        size, sha256 = hash_file(path)
        manifest = Manifest(
            name=name,
            size_bytes=size,
            sha256=sha256,
            description=description,
            labels=MappingProxyType(dict(labels or {})),
            providers=tuple(providers),
            batching=batching or BatchingSettings(),
            session=session or SessionSettings(),
            created_by=created_by,
            samples=samples,
        )
        return self._register_path(path, manifest, reuse_identical=reuse_identical, derivation=None)

    def _register_path(
        self, path: Path, manifest: Manifest, *, reuse_identical: bool, derivation: Derivation | None
    ) -> ModelVersionRecord:
        upload = self.begin_upload(manifest)
        try:
            with path.open("rb") as file:
                while chunk := file.read(MAX_CHUNK_BYTES):
                    upload.write(chunk)
        except BaseException:
            upload.abort()
            raise
        return self._finish(upload, manifest, reuse_identical=reuse_identical, derivation=derivation)

    def _check_manifest(self, manifest: Manifest) -> None:
        check_name(manifest.name)
        check_providers(manifest.providers, f"model {manifest.name!r} providers")
        if manifest.size_bytes <= 0:
            raise InvalidInput(f"manifest size_bytes must be > 0, got {manifest.size_bytes}")
        if manifest.size_bytes > self.max_model_bytes:
            raise ResourceExhausted(
                f"model of {manifest.size_bytes} bytes exceeds the limit of {self.max_model_bytes} bytes"
            )
        if not SHA256_RE.match(manifest.sha256):
            raise InvalidInput(f"manifest sha256 must be 64 hex characters, got {manifest.sha256!r}")

    @staticmethod
    def _check_received(upload: BlobUpload, manifest: Manifest) -> None:
        if upload.size != manifest.size_bytes:
            raise InvalidInput(
                f"received {upload.size} bytes but the manifest declared {manifest.size_bytes}"
            )
        if upload.sha256 != manifest.sha256.lower():
            raise InvalidInput(
                f"sha256 mismatch: manifest says {manifest.sha256.lower()}, "
                f"received bytes hash to {upload.sha256}"
            )

    def _record_version(
        self, manifest: Manifest, info: ModelInfo, reuse_identical: bool, extras: Extras
    ) -> ModelVersionRecord:
        with self._session(write=True) as session:
            model_id = repo.ensure_model(session, manifest.name, manifest.description)
            if reuse_identical:
                rollout.lock_model(session, manifest.name)
                same = repo.version_with_bytes(session, model_id, manifest.sha256.lower())
                if same is not None:
                    return repo.version_record(same, manifest.name, self._path_for)
            number = repo.allocate_version(session, model_id)
            row = repo.insert_version(session, _version_row(model_id, number, manifest, info, extras))
            record = repo.version_record(row, manifest.name, self._path_for)
            after = _audit_view(record)
            repo.add_audit(
                session,
                actor=manifest.created_by,
                action="register" if extras.derivation is None else "derive",
                model=manifest.name,
                version=number,
                before=None,
                after=after,
            )
            repo.bump_revision(session)
        return record

    # -- derived versions and profiles ---------------------------------------------------------

    def derive(
        self,
        model: str,
        version: int,
        recipe: Recipe,
        *,
        gate: Gate | None = None,
        calibration: Samples | None = None,
        description: str = "",
        actor: str = "",
    ) -> ModelVersionRecord:
        """Build a new version of `model` from `version` with `recipe` in a limited subprocess,
        compare it with its source on the source's samples (or generated ones), refuse it when it
        misses `gate`, and register it like an upload. Nothing is stored when any step fails."""
        source = self.get_version(model, version)
        if source.state is VersionState.RETIRED:
            raise FailedPrecondition(
                f"version {version} of model {model!r} is retired; derive from a live one"
            )
        gate = gate if gate is not None and gate.is_set else None
        work = Path(tempfile.mkdtemp(prefix="ortserve-derive-"))
        try:
            source_path = work / "source.onnx"
            with self.store.pinned(source.sha256) as cached:
                shutil.copyfile(cached, source_path)
            samples = self._stored_samples(source)
            recipe = _recorded(recipe, source, calibration)
            derived = derive_model(
                source_path,
                recipe,
                signature=source.signature,
                samples=samples,
                calibration=calibration,
                work_dir=work,
                limits=self._job_limits(source),
                custom_op_libraries=self._custom_op_libraries,
            )
            if gate is not None:
                check_gate(derived.report, gate)
            manifest = _derived_manifest(
                derived.path, source, recipe, samples, description=description, actor=actor
            )
            origin = Derivation(source=version, recipe=recipe, report=derived.report.with_gate(gate))
            try:
                return self._register_path(derived.path, manifest, reuse_identical=False, derivation=origin)
            except InvalidInput as exc:
                raise InvalidInput(
                    f"{describe(recipe)} of version {version}: the derived model is refused: {exc}"
                ) from None
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def profile(self, model: str, version: int, *, batch_size: int = 1, runs: int = 10) -> Profile:
        """ONNX Runtime's profile of `runs` runs of `batch_size` rows (the version's samples, else
        generated inputs) in a limited subprocess; InvalidInput for a batch over 1024 rows (or over
        1 without a batch axis) or runs outside 1..1000."""
        record = self.get_version(model, version)
        work = Path(tempfile.mkdtemp(prefix="ortserve-profile-"))
        try:
            samples = self._stored_samples(record)
            with self.store.pinned(record.sha256) as path:
                return profile_model(
                    path,
                    signature=record.signature,
                    samples=samples,
                    batch=batch_size,
                    runs=runs,
                    work_dir=work,
                    limits=self._job_limits(record),
                    custom_op_libraries=self._custom_op_libraries,
                )
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _stored_samples(self, record: ModelVersionRecord) -> dict[str, np.ndarray] | None:
        if not record.samples_sha256:
            return None
        with self.store.pinned(record.samples_sha256) as path:
            return sample_inputs.from_npz(path, f"the stored samples of version {record.version}")

    def _job_limits(self, record: ModelVersionRecord) -> SandboxLimits:
        """The configured limits; by default room for the model's source and derived copies beside
        ONNX Runtime's own needs."""
        memory = self._job_memory_bytes or self._limits.memory_bytes or 4 * GiB + 3 * record.size_bytes
        return SandboxLimits(memory_bytes=memory, timeout_s=self._job_timeout_s)

    # -- state ----------------------------------------------------------------------------------

    def set_state(
        self, name: str, version: int, state: VersionState, error: str = "", *, actor: str = ""
    ) -> ModelVersionRecord:
        """Store REGISTERED, FAILED or RETIRED (with `error` for FAILED) on a version.

        RETIRED is refused while an alias or the traffic policy routes to the version (see `retire`).
        """
        if state not in STORED_STATES:
            stored = ", ".join(s.value for s in STORED_STATES)
            raise InvalidInput(
                f"state {state.value!r} is not stored in the registry; expected one of {stored}"
            )
        with self._session(write=True) as session:
            return self._change_state(session, name, version, state, error, actor=actor, action="set_state")

    def _change_state(
        self,
        session: Session,
        name: str,
        version: int,
        state: VersionState,
        error: str,
        *,
        actor: str,
        action: str,
    ) -> ModelVersionRecord:
        model = rollout.lock_model(session, name)
        row = rollout.version_row(session, model, version)
        if state is VersionState.RETIRED and row.state != VersionState.RETIRED.value:
            used = rollout.references(session, model, version)
            if used is not None:
                raise FailedPrecondition(f"version {version} of model {name!r} is used {used}")
        before = {"state": row.state, "error": row.error}
        row.state, row.error = state.value, error
        session.flush()
        repo.add_audit(
            session,
            actor=actor,
            action=action,
            model=name,
            version=version,
            before=before,
            after={"state": row.state, "error": row.error},
        )
        repo.bump_revision(session)
        return repo.version_record(row, name, self._path_for)

    # -- rollout --------------------------------------------------------------------------------

    def set_alias(
        self, model: str, alias: str, version: int, *, actor: str = "", action: str = "alias.set"
    ) -> AliasRecord:
        """Point `alias` of `model` at `version` (creating the alias); the old target becomes previous."""
        rollout.check_alias_name(alias)
        with self._session(write=True) as session:
            row = rollout.lock_model(session, model)
            rollout.live_version(session, row, version, f"the target of alias {alias!r}")
            found = rollout.alias_row(session, row, alias)
            before = rollout.alias_view(found)
            if found is None:
                found = Alias(model_id=row.id, name=alias, version=version, previous_version=None)
                session.add(found)
            elif found.version != version:
                found.previous_version, found.version = found.version, version
            found.updated_at, found.updated_by = utcnow(), actor
            session.flush()
            return self._alias_changed(session, found, model, before, actor=actor, action=action)

    def promote(self, model: str, version: int, alias: str = PRODUCTION, *, actor: str = "") -> AliasRecord:
        """`set_alias` recorded as a promotion."""
        return self.set_alias(model, alias, version, actor=actor, action="promote")

    def rollback(self, model: str, alias: str = PRODUCTION, *, actor: str = "") -> AliasRecord:
        """Point `alias` back at its previous version; the version left becomes the previous one."""
        rollout.check_alias_name(alias)
        with self._session(write=True) as session:
            row = rollout.lock_model(session, model)
            found = rollout.existing_alias(session, row, alias)
            if found.previous_version is None:
                raise FailedPrecondition(
                    f"alias {alias!r} of model {model!r} has no previous version to roll back to"
                )
            target = found.previous_version
            rollout.live_version(session, row, target, f"rolled back to by alias {alias!r}")
            before = rollout.alias_view(found)
            found.previous_version, found.version = found.version, target
            found.updated_at, found.updated_by = utcnow(), actor
            session.flush()
            return self._alias_changed(session, found, model, before, actor=actor, action="rollback")

    def delete_alias(self, model: str, alias: str, *, actor: str = "") -> None:
        """Remove `alias`; refused while the model's traffic policy routes to it."""
        rollout.check_alias_name(alias)
        with self._session(write=True) as session:
            row = rollout.lock_model(session, model)
            found = rollout.existing_alias(session, row, alias)
            used = rollout.alias_references(session, row, alias)
            if used is not None:
                raise FailedPrecondition(
                    f"alias {alias!r} of model {model!r} is used {used}; "
                    "change the policy before deleting the alias"
                )
            before = rollout.alias_view(found)
            session.delete(found)
            session.flush()
            repo.add_audit(
                session,
                actor=actor,
                action="alias.delete",
                model=model,
                version=found.version,
                before=before,
                after=None,
            )
            repo.bump_revision(session)

    def set_traffic(
        self, model: str, entries: Sequence[TrafficEntry], *, sticky: bool = False, actor: str = ""
    ) -> TrafficPolicy:
        """Replace the weighted part of the model's policy; no entries removes it (the shadow stays).

        A target is a version number ("3", existing and not retired) or an existing alias name.
        """
        with self._session(write=True) as session:
            row = rollout.lock_model(session, model)
            stored = rollout.check_entries(session, row, entries)
            policy = rollout.policy_row(session, row)
            before = rollout.policy_view(policy)
            if policy is None:
                policy = TrafficPolicyRow(model_id=row.id, shadow_target="", shadow_share=0.0)
                session.add(policy)
            policy.entries, policy.sticky = stored, bool(sticky) and bool(stored)
            return self._policy_changed(session, policy, model, before, actor=actor, action="traffic.set")

    def set_shadow(self, model: str, target: str, share: float, *, actor: str = "") -> TrafficPolicy:
        """Copy `share` (0 < share <= 1) of the model's requests to `target`; "" or 0 clears it."""
        with self._session(write=True) as session:
            row = rollout.lock_model(session, model)
            share = rollout.check_share(row, share)
            if target and share > 0:
                target = rollout.resolve_target(session, row, target, "shadow target")
            else:
                target, share = "", 0.0
            policy = rollout.policy_row(session, row)
            before = rollout.policy_view(policy)
            if policy is None:
                policy = TrafficPolicyRow(model_id=row.id, entries=[], sticky=False)
                session.add(policy)
            policy.shadow_target, policy.shadow_share = target, share
            return self._policy_changed(session, policy, model, before, actor=actor, action="shadow.set")

    def retire(self, model: str, version: int, *, actor: str = "") -> ModelVersionRecord:
        """Mark a version RETIRED; refused while an alias or the traffic policy routes to it."""
        with self._session(write=True) as session:
            return self._change_state(
                session, model, version, VersionState.RETIRED, "", actor=actor, action="retire"
            )

    def aliases(self, model: str) -> list[AliasRecord]:
        """The model's aliases by name."""
        with self._session() as session:
            row = rollout.find_model(session, model)
            return [rollout.alias_record(a, model) for a in rollout.alias_rows(session, row)]

    def get_alias(self, model: str, alias: str) -> AliasRecord:
        rollout.check_alias_name(alias)
        with self._session() as session:
            row = rollout.find_model(session, model)
            return rollout.alias_record(rollout.existing_alias(session, row, alias), model)

    def traffic_policy(self, model: str) -> TrafficPolicy | None:
        """The model's policy, None when it has none."""
        with self._session() as session:
            row = rollout.find_model(session, model)
            policy = rollout.policy_row(session, row)
            return None if policy is None else rollout.policy_record(policy, model)

    def routes(self) -> RouteSnapshot:
        """Revision, aliases and policies of every model, read in one snapshot transaction."""
        with self._session(snapshot=True) as session:
            return rollout.routes(session)

    def _alias_changed(
        self,
        session: Session,
        row: Alias,
        model: str,
        before: dict[str, Any] | None,
        *,
        actor: str,
        action: str,
    ) -> AliasRecord:
        repo.add_audit(
            session,
            actor=actor,
            action=action,
            model=model,
            version=row.version,
            before=before,
            after=rollout.alias_view(row),
        )
        repo.bump_revision(session)
        return rollout.alias_record(row, model)

    def _policy_changed(
        self,
        session: Session,
        row: TrafficPolicyRow,
        model: str,
        before: dict[str, Any] | None,
        *,
        actor: str,
        action: str,
    ) -> TrafficPolicy:
        """Store (or delete, when it routes nothing) the policy; audit and bump the revision."""
        row.updated_at, row.updated_by = utcnow(), actor
        after = None if rollout.is_empty(row) else rollout.policy_view(row)
        if after is None:
            if row in session.new:
                session.expunge(row)
            else:
                session.delete(row)
        session.flush()
        repo.add_audit(
            session, actor=actor, action=action, model=model, version=None, before=before, after=after
        )
        repo.bump_revision(session)
        return rollout.policy_record(row, model)

    # -- reads ----------------------------------------------------------------------------------

    def get_model(self, name: str) -> ModelRecord:
        with self._session() as session:
            found = repo.model(session, name, self._path_for)
        if found is None:
            raise NotFound(f"model {name!r} is not registered")
        return found

    def list_models(
        self, page_size: int = DEFAULT_PAGE_SIZE, page_token: str = ""
    ) -> tuple[list[ModelRecord], str]:
        """One page of models by name and the token of the next page ("" after the last)."""
        size = page_size_of(page_size)
        after = decode_token(page_token)
        with self._session() as session:
            found = repo.models(session, self._path_for, after=after, limit=size + 1)
        page = found[:size]
        return page, (encode_token(page[-1].name) if len(found) > size else "")

    def list_versions(self, name: str) -> list[ModelVersionRecord]:
        return list(self.get_model(name).versions)

    def get_version(self, name: str, version: int) -> ModelVersionRecord:
        with self._session() as session:
            row = rollout.version_row(session, rollout.find_model(session, name), version)
            return repo.version_record(row, name, self._path_for)

    def latest_version(self, name: str) -> ModelVersionRecord:
        """The highest-numbered version that is not retired."""
        live = [v for v in self.list_versions(name) if v.state is not VersionState.RETIRED]
        if not live:
            raise NotFound(f"model {name!r} has no version that is not retired")
        return live[-1]

    def all_versions(self) -> list[ModelVersionRecord]:
        """Every version that is not retired, by model name and number (the server's snapshot)."""
        with self._session() as session:
            return repo.versions(session, self._path_for, live_only=True)

    def revision(self) -> int:
        with self._session() as session:
            return repo.revision(session)

    def snapshot(self) -> tuple[list[ModelVersionRecord], RouteSnapshot]:
        """Every live version and the routes, read in one snapshot transaction: the routes never
        name a version the list lacks, even while other replicas write."""
        with self._session(snapshot=True) as session:
            return repo.versions(session, self._path_for, live_only=True), rollout.routes(session)

    def audit_events(self, model: str | None = None, limit: int = 100) -> list[AuditEventRecord]:
        with self._session() as session:
            return repo.audit_events(session, model, limit)

    def referenced_blobs(self) -> set[str]:
        """The sha256 of every version's bytes and samples, retired ones included: the blobs the
        store must keep."""
        with self._session() as session:
            return repo.referenced_sha256(session)

    def collect_garbage(
        self, *, blob_grace_s: float = 3600.0, stale_temp_s: float = STALE_TEMP_S, dry_run: bool = False
    ) -> list[Garbage]:
        """Remove store blobs no version refers to (older than `blob_grace_s`) and temp files of
        uploads untouched for `stale_temp_s`; with `dry_run`, only list them. Refused unless the
        database is at this ortserve's migration head: a newer schema may reference blobs this code
        cannot see (FailedPrecondition naming both revisions)."""
        check_at_head(self.engine, "gc")
        referenced = self.referenced_blobs()
        return self.store.collect_garbage(
            referenced, blob_grace_s=blob_grace_s, stale_temp_s=stale_temp_s, dry_run=dry_run
        )

    # -- plumbing -------------------------------------------------------------------------------

    def _path_for(self, sha256: str) -> str:
        return str(self.store.path_for(sha256))

    @contextmanager
    def _session(self, *, write: bool = False, snapshot: bool = False) -> Iterator[Session]:
        """A session in one transaction, committed on success; database errors become domain errors.

        `snapshot`: a read-only transaction whose statements all see one state of the database.
        """
        bind = self.engine if write else self._snapshot_reader if snapshot else self._reader
        try:
            with Session(bind, expire_on_commit=False) as session, session.begin():
                yield session
        except sa.exc.IntegrityError as exc:
            message = logged("a concurrent registry change conflicted with this one; retry", exc)
            raise Aborted(message) from exc
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            raise Unavailable(logged("the registry database is unavailable; retry later", exc)) from exc


def _recorded(recipe: Recipe, source: ModelVersionRecord, calibration: Samples | None) -> Recipe:
    """The recipe with the fields the server sets: the sha256 of the .npz bytes and the rows of the
    inputs static quantization calibrates on (those given, else the source's samples)."""
    if not isinstance(recipe, Quantize):
        return recipe
    if recipe.mode != "static":
        return dataclasses.replace(recipe, calibration_sha256="", calibration_rows=0)
    if calibration is None:
        sha256, rows = source.samples_sha256, source.sample_rows
    else:
        rows = sample_inputs.check_samples(source.signature, calibration, "calibration inputs")
        sha256 = hashlib.sha256(sample_inputs.to_npz(calibration)).hexdigest()
    return dataclasses.replace(recipe, calibration_sha256=sha256, calibration_rows=rows)


def _derived_manifest(
    path: Path,
    source: ModelVersionRecord,
    recipe: Recipe,
    samples: Samples | None,
    *,
    description: str,
    actor: str,
) -> Manifest:
    """The derived file as the next version of the source's model, with the source's settings and
    samples (not when fp16 inputs replace float32 ones: the samples no longer fit)."""
    size, sha256 = hash_file(path)
    changes_inputs = isinstance(recipe, Fp16) and recipe.fp16_io
    return Manifest(
        name=source.model,
        size_bytes=size,
        sha256=sha256,
        description=description or f"{describe(recipe)} of version {source.version}",
        labels=source.labels,
        providers=source.providers,
        batching=source.batching,
        session=source.session,
        created_by=actor,
        samples=None if changes_inputs else samples,
    )


def _version_row(
    model_id: int, number: int, manifest: Manifest, info: ModelInfo, extras: Extras
) -> ModelVersion:
    origin = extras.derivation
    return ModelVersion(
        model_id=model_id,
        version=number,
        sha256=manifest.sha256.lower(),
        size_bytes=manifest.size_bytes,
        opset=info.opset,
        producer=info.producer,
        signature=info.signature.to_json(),
        providers=[p.to_json() for p in manifest.providers],
        batching=manifest.batching.to_json(),
        session=manifest.session.to_json(),
        state=VersionState.REGISTERED.value,
        error="",
        description=manifest.description,
        labels=dict(manifest.labels),
        created_by=manifest.created_by,
        created_at=utcnow(),
        derived_from=origin.source if origin else None,
        recipe=recipe_to_json(origin.recipe) if origin else None,
        report=origin.report.to_json() if origin else None,
        samples_sha256=extras.samples_sha256,
        sample_rows=extras.sample_rows,
    )


def _audit_view(record: ModelVersionRecord) -> dict[str, Any]:
    return {
        "version": record.version,
        "sha256": record.sha256,
        "size_bytes": record.size_bytes,
        "state": record.state.value,
        "description": record.description,
        "labels": dict(record.labels),
        "sample_rows": record.sample_rows,
        **_origin_view(record),
    }


def _origin_view(record: ModelVersionRecord) -> dict[str, Any]:
    if record.recipe is None:
        return {}
    return {"derived_from": record.derived_from, "recipe": recipe_to_json(record.recipe)}
