"""Register what a model directory holds, at start (`ortserve serve --model-dir DIR`).

Two layouts, the ones KServe's storage initializer and Triton users leave on disk:
- `DIR/model.onnx`: one model, named by the `model_name` setting or else by the directory;
- a Triton-style repository `DIR/<name>/<version>/model.onnx`: every model, every numbered version in
  version order, with batching read from `DIR/<name>/config.pbtxt` (Triton's ModelConfig in text
  format: `max_batch_size`, `dynamic_batching { max_queue_delay_microseconds, preferred_batch_size,
  default_queue_policy { max_queue_size } }`, and `default_model_filename` in place of model.onnx).

A restart registers nothing twice: a file whose sha256 some version of that model already has (a
retired one included) is left alone, and new files become new versions. Whatever the directory holds
that cannot be used is logged with its path and the reason, and the rest is registered: a model
file that fails validation, a version folder without a model, a config.pbtxt that does not parse
(that model is left out, as Triton leaves it out). A registry that cannot be reached fails the start.
Registrations go through `Registry.register_file`, the path every upload takes. Reading config.pbtxt
and walking the repository are triton_repo's, shared with `models import-triton`; unlike that
command, every version is registered here, whatever the config's version_policy says.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import structlog

from ortserve import triton_repo
from ortserve.errors import InvalidInput, NotFound, ResourceExhausted
from ortserve.records import BatchingSettings, ModelVersionRecord
from ortserve.registry.service import Registry, check_name
from ortserve.store import hash_file

log = structlog.get_logger(__name__)

MODEL_FILE = triton_repo.MODEL_FILE
LAYOUTS = f"{MODEL_FILE} or <name>/<version>/{MODEL_FILE}"
CREATED_BY = "model-dir"


@dataclass(frozen=True, slots=True)
class Candidate:
    """One model file to register: `label` is its Triton version folder ("" for a single model)."""

    model: str
    path: Path
    where: str  # the path inside the model directory, for the version's description
    batching: BatchingSettings | None = None
    label: str = ""


@dataclass(slots=True)
class Outcome:
    """What one pass over the directory did; every skipped or rejected path with its reason."""

    registered: list[ModelVersionRecord] = field(default_factory=list)
    unchanged: list[Path] = field(default_factory=list)
    rejected: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def skip(self, path: Path, reason: str) -> None:
        log.warning("model_dir_skipped", path=str(path), reason=reason)
        self.skipped.append((path, reason))


def register_model_dir(registry: Registry, directory: str | Path, model_name: str = "") -> Outcome:
    """Register every model file in `directory` that the registry does not hold yet."""
    root = Path(directory)
    if not root.is_dir():
        raise InvalidInput(f"model_dir {str(root)!r} is not a directory")
    outcome = Outcome()
    candidates = _scan(root, model_name, outcome)
    if not candidates and not outcome.skipped:
        log.warning("model_dir_empty", path=str(root), expected=LAYOUTS)
    known: dict[str, set[str]] = {}
    for candidate in candidates:
        _register(registry, candidate, known, outcome)
    log.info(
        "model_dir_done",
        path=str(root),
        registered=len(outcome.registered),
        unchanged=len(outcome.unchanged),
        rejected=len(outcome.rejected),
        skipped=len(outcome.skipped),
    )
    return outcome


def _scan(root: Path, model_name: str, outcome: Outcome) -> list[Candidate]:
    single = root / MODEL_FILE
    if single.is_file():
        name = model_name or root.resolve().name
        try:
            check_name(name)
        except InvalidInput as exc:
            raise InvalidInput(f"model_dir {str(root)!r}: set model_name: {exc}") from None
        for entry in sorted(root.iterdir()):
            if entry != single:
                outcome.skip(entry, f"not used: the directory holds a single {MODEL_FILE}")
        return [Candidate(name, single, MODEL_FILE)]
    if model_name:
        log.warning("model_dir_model_name_unused", path=str(root), reason=f"no {MODEL_FILE} at the top")
    candidates: list[Candidate] = []
    for entry in sorted(root.iterdir()):
        if entry.is_dir():
            candidates.extend(_scan_model(entry, outcome))
        else:
            outcome.skip(entry, f"not a model folder (expected {LAYOUTS})")
    return candidates


def _scan_model(folder: Path, outcome: Outcome) -> list[Candidate]:
    """The versions of one model of a Triton-style repository, in version order."""
    try:
        model = triton_repo.read_model(folder)
    except InvalidInput as exc:
        outcome.skip(folder, str(exc))
        return []
    if model.unknown_fields:
        log.warning(
            "model_dir_config_fields_ignored", path=str(model.config_file), fields=list(model.unknown_fields)
        )
    for path, reason in model.skipped:
        outcome.skip(path, reason)
    return [
        Candidate(model.name, version.path, version.where, model.batching, str(version.number))
        for version in model.versions
    ]


def _register(registry: Registry, candidate: Candidate, known: dict[str, set[str]], outcome: Outcome) -> None:
    """Register the candidate unless its bytes are a version of its model already."""
    if candidate.model not in known:
        known[candidate.model] = _registered_digests(registry, candidate.model)
    try:
        size, sha256 = hash_file(candidate.path)
        if size == 0:
            raise InvalidInput("the file is empty")
        if sha256 in known[candidate.model]:
            log.info("model_dir_unchanged", model=candidate.model, path=str(candidate.path), sha256=sha256)
            outcome.unchanged.append(candidate.path)
            return
        record = registry.register_file(
            candidate.path,
            candidate.model,
            description=f"from the model directory: {candidate.where}",
            labels={"model_dir.version": candidate.label} if candidate.label else None,
            batching=candidate.batching,
            created_by=CREATED_BY,
            reuse_identical=True,  # another replica may be registering the same file right now
        )
    except (InvalidInput, ResourceExhausted, OSError) as exc:
        # A registry that cannot be reached is not the file's fault: that fails the start.
        reason = f"cannot read it: {exc.strerror or exc}" if isinstance(exc, OSError) else str(exc)
        log.error("model_dir_rejected", model=candidate.model, path=str(candidate.path), reason=reason)
        outcome.rejected.append((candidate.path, reason))
        return
    known[candidate.model].add(record.sha256)
    log.info("model_dir_registered", model=record.model, version=record.version, path=str(candidate.path))
    outcome.registered.append(record)


def _registered_digests(registry: Registry, model: str) -> set[str]:
    try:
        return {version.sha256 for version in registry.list_versions(model)}
    except NotFound:
        return set()
