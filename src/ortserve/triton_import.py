"""`ortserve models import-triton DIR`: register a Triton model repository's ONNX models through a server.

`plan_repository` reads the repository (triton_repo, the reader `serve --model-dir` uses too) and
decides, per model, what becomes of each part of it:
- every numbered version folder's model file (`model.onnx` or `default_model_filename`) that the
  config's `version_policy` selects (Triton's default: the latest 1) becomes a version, in version
  order, labelled `triton.version`;
- `max_batch_size` and `dynamic_batching` (`max_queue_delay_microseconds`, `preferred_batch_size`,
  `default_queue_policy.max_queue_size`) become the version's batching settings;
- ONNX Runtime execution accelerators (`tensorrt`, `cuda`, `openvino`) and the instance kinds
  (KIND_GPU: CUDA, KIND_CPU: CPU) become its execution provider preference.
Everything else the repository holds is listed as not carried over, with the reason: nothing is
dropped silently. A model whose configuration cannot be read is reported with the file and the
reason, and the others are imported. `apply_plan` then registers through the SDK's `Client.register`,
skipping files whose bytes the model already has, so running it twice registers nothing twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message

from ortserve import triton_repo
from ortserve.api.inference import model_config_pb2
from ortserve.client import Batching, Client
from ortserve.errors import InvalidInput, OrtserveError
from ortserve.store.digest import hash_file

VERSION_LABEL = "triton.version"  # the Triton version folder a version came from
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
GPU_ACCELERATORS = {"tensorrt": "TensorrtExecutionProvider", "cuda": CUDA}
CPU_ACCELERATORS = {"openvino": "OpenVINOExecutionProvider"}
KIND = model_config_pb2.ModelInstanceGroup.Kind
# A registration refused for this version's own sake; any other code (unreachable, not allowed,
# internal) stops the import.
VERSION_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)

# Fields of config.pbtxt that are carried over, or that ortserve reads from the ONNX file itself
# (inputs and outputs); every other field that is set is listed as not carried over.
_CARRIED: dict[str, Any] = {
    "name": True,
    "platform": True,
    "backend": True,
    "max_batch_size": True,
    "default_model_filename": True,
    "version_policy": True,
    "model_warmup": True,  # listed on its own, with a count
    "input": {"name": True, "data_type": True, "dims": True},
    "output": {"name": True, "data_type": True, "dims": True},
    "instance_group": {"name": True, "kind": True},
    "dynamic_batching": {
        "max_queue_delay_microseconds": True,
        "preferred_batch_size": True,
        "default_queue_policy": {"max_queue_size": True},
    },
    "optimization": {
        "execution_accelerators": {
            "gpu_execution_accelerator": {"name": True},
            "cpu_execution_accelerator": {"name": True},
        }
    },
}
_IO = "ortserve reads inputs and outputs from the ONNX graph"
_DEADLINES = "request deadlines come from each call's timeout"
_PRIORITIES = "priorities are per request (PredictRequest.priority), not configured levels"
# Why a field is not carried over, by its last name; `_NO_EQUIVALENT` otherwise.
_WHY = {
    "count": "one shared session per version on each server; batching.max_concurrent_batches sets "
    "how many batches run at once",
    "gpus": "device placement is the server's: its providers and CUDA_VISIBLE_DEVICES",
    "rate_limiter": "no rate limiter: batching.max_queue_size bounds each version's queue",
    "secondary_devices": "device placement is the server's",
    "sequence_batching": "stateful sequence batching is not supported",
    "ensemble_scheduling": "ensembles are not supported",
    "batch_input": "ragged batching is not supported",
    "batch_output": "ragged batching is not supported",
    "response_cache": "ortserve has no response cache",
    "model_transaction_policy": "decoupled models (several responses per request) are not supported",
    "metric_tags": "metrics are labelled by model and version",
    "graph": "session settings are not carried over (graph optimization stays 'all')",
    "parameters": "backend and provider parameters are not carried over",
    "preserve_ordering": "each request is answered when its batch is done",
    "priority_levels": _PRIORITIES,
    "default_priority_level": _PRIORITIES,
    "priority_queue_policy": _PRIORITIES,
    "timeout_action": _DEADLINES,
    "default_timeout_microseconds": _DEADLINES,
    "allow_timeout_override": _DEADLINES,
    "format": _IO,
    "reshape": _IO,
    "is_shape_tensor": _IO,
    "allow_ragged_batch": _IO,
    "optional": _IO,
    "label_filename": "classification labels are not supported",
}
_NO_EQUIVALENT = "no ortserve equivalent"
# Values that mean what ortserve does anyway: not listed.
_SAME: dict[str, object] = {"count": 1}
_NOT_ONNX = {
    "ensemble": "an ensemble: ortserve has no ensembles (its ONNX steps import as models of their own)",
    "python": "a Python backend model: ortserve runs ONNX models only",
}


@dataclass(frozen=True, slots=True)
class Dropped:
    """Something of the repository that the import does not carry over, and why."""

    what: str
    reason: str


@dataclass(slots=True)
class VersionPlan:
    triton_version: int
    path: Path
    file: str  # "<model>/<version>/<file>" inside the repository
    # register (planned), excluded (by version_policy), registered, unchanged, failed
    action: str
    version: int = 0  # ortserve's version number once registered or found
    state: str = ""
    detail: str = ""


@dataclass(slots=True)
class ModelPlan:
    name: str
    # import (planned), skipped (nothing ortserve can serve), error (unreadable configuration);
    # after the import: imported, unchanged, failed
    status: str
    reason: str = ""
    config_file: str = ""
    version_policy: str = ""
    batching: Batching | None = None
    providers: tuple[str, ...] = ()
    versions: list[VersionPlan] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)


def plan_repository(root: Path) -> list[ModelPlan]:
    """What importing `root` does, model by model in name order; reads files only."""
    if not root.is_dir():
        raise OrtserveError(f"{str(root)!r} is not a directory (expected a Triton model repository)")
    plans = []
    for entry in sorted(root.iterdir()):
        if entry.is_dir():
            plans.append(plan_model(entry, root))
        else:
            plans.append(ModelPlan(entry.name, "skipped", "not a model folder"))
    return plans


def plan_model(folder: Path, root: Path) -> ModelPlan:
    config_file = folder / triton_repo.CONFIG_FILE
    shown = str(config_file) if config_file.is_file() else ""
    try:
        model = triton_repo.read_model(folder)
        config = model.config
        selected, policy = triton_repo.select_versions(config, [v.number for v in model.versions])
    except triton_repo.NotOnnxModel as exc:
        return ModelPlan(
            folder.name, "skipped", _NOT_ONNX.get(exc.runtime, f"{exc.path} {exc.reason}"), shown
        )
    except triton_repo.TritonModelError as exc:
        if exc.path != config_file:  # the folder's name is no model name
            return ModelPlan(folder.name, "skipped", exc.reason, shown)
        return ModelPlan(folder.name, "error", f"{exc.path} {exc.reason}", shown)
    except InvalidInput as exc:  # the version policy
        return ModelPlan(folder.name, "error", f"{config_file}: {exc}", shown)
    plan = ModelPlan(model.name, "import", config_file=shown, version_policy=policy)
    plan.batching = _batching(model.batching, config)
    plan.providers = _providers(config, plan.dropped) if config is not None else ()
    for version in model.versions:
        chosen = version.number in selected
        detail = "" if chosen else f"not selected by version_policy {policy}"
        action = "register" if chosen else "excluded"
        plan.versions.append(VersionPlan(version.number, version.path, version.where, action, detail=detail))
    if config is not None:
        _list_dropped(config, model, selected, plan.dropped)
    plan.dropped.extend(Dropped(str(path.relative_to(root)), reason) for path, reason in model.skipped)
    if not selected:
        plan.status, plan.reason = (
            "skipped",
            "no version to import"
            + (f" (version_policy {policy})" if model.versions else ": no version folder with a model file"),
        )
    return plan


def _batching(settings: Any, config: triton_repo.ModelConfig | None) -> Batching | None:
    """The SDK's batching; a queue size the config does not set stays the server's default (0)."""
    if settings is None or config is None:
        return None
    return Batching(
        max_batch_size=settings.max_batch_size,
        max_queue_delay_us=settings.max_queue_delay_us,
        preferred_batch_sizes=tuple(settings.preferred_batch_sizes),
        max_queue_size=config.dynamic_batching.default_queue_policy.max_queue_size,
    )


def _providers(config: triton_repo.ModelConfig, dropped: list[Dropped]) -> tuple[str, ...]:
    """The provider preference that runs the model where Triton's instances and accelerators would."""
    kinds = {group.kind for group in config.instance_group} or {KIND.KIND_AUTO}
    accelerators = config.optimization.execution_accelerators
    gpu = _accelerators(accelerators.gpu_execution_accelerator, GPU_ACCELERATORS, "gpu", dropped)
    cpu = _accelerators(accelerators.cpu_execution_accelerator, CPU_ACCELERATORS, "cpu", dropped)
    on_gpu = KIND.KIND_GPU in kinds or (KIND.KIND_AUTO in kinds and bool(gpu))
    on_cpu = KIND.KIND_CPU in kinds or KIND.KIND_AUTO in kinds
    chosen: list[str] = []
    if on_gpu:
        chosen += [*gpu, CUDA]
    elif gpu:
        dropped.append(Dropped("gpu_execution_accelerator", "the model's instances are all KIND_CPU"))
    if on_cpu:
        chosen += cpu
    elif cpu:
        dropped.append(Dropped("cpu_execution_accelerator", "the model's instances are all KIND_GPU"))
    if chosen or KIND.KIND_CPU in kinds:
        chosen.append(CPU)
    if KIND.KIND_MODEL in kinds:
        dropped.append(Dropped("instance_group kind KIND_MODEL", "device placement is the server's"))
    return tuple(dict.fromkeys(chosen))


def _accelerators(items: Any, known: dict[str, str], side: str, dropped: list[Dropped]) -> list[str]:
    names = []
    for accelerator in items:
        provider = known.get(accelerator.name)
        if provider is None:
            what = f"{side}_execution_accelerator {accelerator.name!r}"
            dropped.append(
                Dropped(what, f"not an ONNX Runtime accelerator ortserve knows ({', '.join(known)})")
            )
        else:
            names.append(provider)
    return names


def _list_dropped(
    config: triton_repo.ModelConfig,
    model: triton_repo.TritonModel,
    selected: list[int],
    dropped: list[Dropped],
) -> None:
    policy = config.version_policy
    if policy.WhichOneof("policy_choice") == "specific":
        dropped.extend(
            Dropped(f"version_policy version {n}", "no version folder with a model file")
            for n in sorted(set(policy.specific.versions) - set(selected))
        )
    if config.model_warmup:
        dropped.append(
            Dropped(
                f"model_warmup ({len(config.model_warmup)} sample(s))",
                "the registry has no place for sample inputs; each version is warmed up at load "
                "with inputs made from its signature",
            )
        )
    _leftovers(config, _CARRIED, "", dropped)
    for name in model.unknown_fields:
        dropped.append(Dropped(name, _WHY.get(name.rsplit(".", 1)[-1], "not a field ortserve reads")))


def _leftovers(message: Message, carried: dict[str, Any], prefix: str, dropped: list[Dropped]) -> None:
    """List the fields of `message` that are set and not in `carried` (recursively)."""
    for fd, value in message.ListFields():
        inner = carried.get(fd.name)
        if inner is True:
            continue
        path = prefix + fd.name
        if isinstance(inner, dict):
            items = value if _repeated(fd) else [value]
            for i, item in enumerate(items):
                label = f"[{getattr(item, 'name', '') or i}]" if _repeated(fd) else ""
                _leftovers(item, inner, f"{path}{label}.", dropped)
            continue
        if fd.name not in _SAME or _SAME[fd.name] != value:
            what = f"{path} {_value_text(fd, value)}".rstrip()
            dropped.append(Dropped(what, _WHY.get(fd.name, _NO_EQUIVALENT)))


def _repeated(fd: Any) -> bool:
    return bool(fd.is_repeated)


def _value_text(fd: Any, value: Any) -> str:
    if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
        return "{" + ", ".join(f"{k}: {_short(v)}" for k, v in sorted(value.items())) + "}"
    if fd.message_type is not None:
        return ""
    if fd.enum_type is not None:
        return f"= {fd.enum_type.values_by_number[value].name}"
    return f"= {_short(value)}"


def _short(value: Any) -> str:
    text = str(value).replace("\n", " ").strip()
    return text if len(text) <= 60 else text[:57] + "..."


# -- registering ---------------------------------------------------------------------------------


def apply_plan(
    plans: list[ModelPlan], client: Client, *, load: bool, progress: Callable[[str], None] | None = None
) -> None:
    """Register every planned version through `client`, in model and version order."""
    for plan in plans:
        if plan.status != "import":
            continue
        known = _registered(client, plan.name)
        for version in plan.versions:
            if version.action == "register":
                if progress is not None:
                    progress(version.file)
                _register(client, plan, version, known, load)
        actions = {v.action for v in plan.versions}
        plan.status = (
            "failed" if "failed" in actions else "imported" if "registered" in actions else "unchanged"
        )


def _registered(client: Client, name: str) -> dict[str, int]:
    """sha256 -> version of the model's versions (none when the model is new)."""
    try:
        return {v.sha256: v.version for v in client.list_versions(name)}
    except grpc.RpcError as exc:
        if isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.NOT_FOUND:
            return {}
        raise


def _register(
    client: Client, plan: ModelPlan, version: VersionPlan, known: dict[str, int], load: bool
) -> None:
    try:
        _size, sha256 = hash_file(version.path)
        if sha256 in known:
            version.action, version.version = "unchanged", known[sha256]
            version.detail = f"the model has these bytes already (version {known[sha256]})"
            return
        info = client.register(
            version.path,
            plan.name,
            description=f"imported from a Triton repository: {version.file}",
            labels={VERSION_LABEL: str(version.triton_version)},
            providers=plan.providers,
            batching=plan.batching,
            load=load,
        )
    except OSError as exc:
        version.action, version.detail = "failed", f"cannot read {version.path}: {exc.strerror or exc}"
        return
    except grpc.RpcError as exc:
        if not (isinstance(exc, grpc.Call) and exc.code() in VERSION_CODES):
            raise
        version.action, version.detail = "failed", f"{exc.code().name}: {exc.details()}"
        return
    known[info.sha256] = info.version
    version.action, version.version, version.state = "registered", info.version, info.state


def failed(plans: list[ModelPlan]) -> bool:
    """Whether a configuration could not be read or a version was refused."""
    return any(p.status in ("error", "failed") for p in plans)
