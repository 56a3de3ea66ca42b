"""Synchronous client for ortserve.api.v1 (InferenceService and RegistryService).

The result types, the numpy <-> Tensor conversion and the request builders here are shared with
`ortserve.client.aio.AsyncClient`, which mirrors `Client` method for method.

Rollout operations (promote, rollback, traffic, shadow, aliases, retire, audit, watch) map one to
one onto RegistryService RPCs; their result types live in `ortserve.client.rollout`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

from ortserve import dtypes, tensors
from ortserve.api.v1 import inference_service_pb2 as ipb
from ortserve.api.v1 import inference_service_pb2_grpc as ipb_grpc
from ortserve.api.v1 import model_pb2 as mpb
from ortserve.api.v1 import registry_service_pb2 as rpb
from ortserve.api.v1 import registry_service_pb2_grpc as rpb_grpc
from ortserve.api.v1 import tensor_pb2 as tpb
from ortserve.client.bridge import Guarded
from ortserve.client.channel import (
    DEFAULT_ADDRESS,
    MAX_MESSAGE_BYTES,
    PemSource,
    RetryPolicy,
    plan_channel,
)
from ortserve.client.rollout import (
    STATE_NAMES,
    AliasInfo,
    AuditEntry,
    ModelEvent,
    ShadowInfo,
    TrafficInfo,
    alias_of,
    audit_of,
    event_of,
    shadow_of,
    traffic_of,
    traffic_request,
)
from ortserve.errors import InvalidInput
from ortserve.provider_specs import ProviderLike, to_specs
from ortserve.store.digest import hash_file
from ortserve.toolkit.messages import (
    gate_to_pb,
    operator_from_pb,
    recipe_from_pb,
    recipe_to_pb,
    report_from_pb,
)
from ortserve.toolkit.profile import OperatorTime
from ortserve.toolkit.recipes import Fp16, Gate, Optimize, Quantize, Recipe
from ortserve.toolkit.report import EvaluationReport

CHUNK_BYTES = 1 << 20
DEFAULT_RETRY = RetryPolicy()
_DTYPE_OF_ENUM = {
    tpb.DataType.Value("DATA_TYPE_" + ("STRING" if d is dtypes.BYTES else d.name)): d for d in dtypes.ALL
}
_ENUM_OF_DTYPE = {d: e for e, d in _DTYPE_OF_ENUM.items()}


@dataclass(frozen=True, slots=True)
class SharedTensor:
    """An input whose bytes are in a shared memory region registered with `register_shared_memory`.

    Write the array's bytes (C order, little-endian) at `offset` of the region first, e.g.
    `np.ndarray(shape, dtype, buffer=shm.buf, offset=offset)[...] = array` over a
    `multiprocessing.shared_memory.SharedMemory`; the server reads them without a copy.
    """

    region: str
    shape: tuple[int, ...]
    dtype: npt.DTypeLike
    offset: int = 0

    def to_tensor(self, name: str) -> tpb.Tensor:
        dtype = np.dtype(self.dtype)
        byte_size = int(np.prod(self.shape, dtype=np.int64)) * dtype.itemsize
        return tpb.Tensor(
            name=name,
            data_type=_ENUM_OF_DTYPE[dtypes.of_array(np.empty(0, dtype))],
            shape=self.shape,
            shared_memory=tpb.SharedMemoryRef(region=self.region, offset=self.offset, byte_size=byte_size),
        )


Inputs = Mapping[str, "npt.ArrayLike | SharedTensor"]
Arrays = Mapping[str, np.ndarray]
Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class Prediction:
    """Outputs by name, the version that served them, and where the time went (microseconds)."""

    outputs: dict[str, np.ndarray]
    model: str
    version: int
    queue_us: int
    compute_us: int
    batch_size: int
    provider: str

    @property
    def server_us(self) -> int:
        """Time on the server: waiting in the batch queue plus computing."""
        return self.queue_us + self.compute_us


@dataclass(frozen=True, slots=True)
class Batching:
    """Dynamic batching of a version. `max_batch_size` None: on when the model has a batch axis;
    0 turns batching off. Zeros elsewhere take the server's defaults when registering."""

    max_batch_size: int | None = None
    max_queue_delay_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 0
    max_concurrent_batches: int = 0


@dataclass(frozen=True, slots=True)
class VersionInfo:
    model: str
    version: int
    state: str
    error: str
    sha256: str
    size_bytes: int
    inputs: list[tuple[str, str, list[int]]]
    outputs: list[tuple[str, str, list[int]]]
    providers: list[str]
    description: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    created_by: str = ""
    create_time: datetime | None = None
    batch_axis: bool = False
    # The version's provider preference and batching as registered (`providers` are the active ones).
    preferred_providers: list[str] = field(default_factory=list)
    batching: Batching = field(default_factory=Batching)
    # Preferred providers the loaded session could not use (it runs on `providers` instead).
    fallback_providers: list[str] = field(default_factory=list)
    # A derived version: its source, how it was built and its comparison with the source.
    derived_from: int | None = None
    recipe: Recipe | None = None
    report: EvaluationReport | None = None
    # Rows of sample inputs stored with the version at registration (0: none).
    sample_rows: int = 0


@dataclass(frozen=True, slots=True)
class ProfileResult:
    """ONNX Runtime's profile of a version: nodes by total time (most first) and the Chrome trace
    (JSON, opens in Perfetto), the mean time of one run and the providers it ran on."""

    operators: tuple[OperatorTime, ...]
    chrome_trace: bytes
    mean_run_ms: float
    providers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    description: str
    versions: list[VersionInfo]
    aliases: dict[str, int] = field(default_factory=dict)
    traffic: TrafficInfo | None = None
    # Shadow comparison as seen by the server that answered.
    shadow: ShadowInfo | None = None


class StreamMessageError(Exception):
    """One message of a PredictStream failed; the code is a grpc.StatusCode value."""

    def __init__(self, message_id: str, code: int, message: str) -> None:
        super().__init__(f"stream message {message_id}: {message}")
        self.message_id = message_id
        self.code = code
        self.message = message

    @property
    def status(self) -> grpc.StatusCode | None:
        """The grpc.StatusCode of `code`, or None for a value gRPC does not know."""
        return next((s for s in grpc.StatusCode if s.value[0] == self.code), None)


def to_tensor(name: str, array: npt.ArrayLike | SharedTensor) -> tpb.Tensor:
    if isinstance(array, SharedTensor):
        return array.to_tensor(name)
    array = np.asarray(array)
    return tpb.Tensor(
        name=name,
        data_type=_ENUM_OF_DTYPE[dtypes.of_array(array)],
        shape=array.shape,
        raw_data=tensors.encode(array),
    )


def from_tensor(tensor: tpb.Tensor) -> np.ndarray:
    return tensors.decode(
        tensor.raw_data, _DTYPE_OF_ENUM[tensor.data_type], tensor.shape, f"output {tensor.name!r}"
    )


def prediction_of(response: ipb.PredictResponse) -> Prediction:
    t = response.timing
    return Prediction(
        outputs={o.name: from_tensor(o) for o in response.outputs},
        model=response.model,
        version=response.model_version,
        queue_us=t.queue_us,
        compute_us=t.compute_us,
        batch_size=t.batch_size,
        provider=t.provider,
    )


def version_info_of(v: mpb.ModelVersion) -> VersionInfo:
    def specs(items: Sequence[tpb.TensorSpec]) -> list[tuple[str, str, list[int]]]:
        return [(s.name, _DTYPE_OF_ENUM[s.data_type].name, list(s.shape)) for s in items]

    return VersionInfo(
        model=v.model,
        version=v.version,
        state=STATE_NAMES[v.state],
        error=v.error,
        sha256=v.sha256,
        size_bytes=v.size_bytes,
        inputs=specs(v.signature.inputs),
        outputs=specs(v.signature.outputs),
        providers=list(v.active_providers),
        description=v.description,
        labels=dict(v.labels),
        created_by=v.created_by,
        create_time=v.create_time.ToDatetime() if v.HasField("create_time") else None,
        batch_axis=v.signature.batch_axis,
        preferred_providers=[p.name for p in v.providers],
        batching=batching_of(v.batching),
        fallback_providers=list(v.fallback_providers),
        derived_from=v.derived_from or None,
        recipe=recipe_from_pb(v.recipe) if v.HasField("recipe") else None,
        report=report_from_pb(v.report) if v.HasField("report") else None,
        sample_rows=v.sample_rows,
    )


def derive_request(
    model: str,
    version: int,
    recipe: Recipe,
    *,
    gate: Gate | None,
    calibration: Arrays | None,
    description: str,
    load: bool,
) -> rpb.DeriveModelVersionRequest:
    return rpb.DeriveModelVersionRequest(
        model=model,
        version=version,
        recipe=recipe_to_pb(recipe),
        gate=gate_to_pb(gate) if gate is not None else None,
        calibration=[to_tensor(name, array) for name, array in (calibration or {}).items()],
        description=description,
        load=load,
    )


def profile_request(model: str, version: int, batch_size: int, runs: int) -> rpb.ProfileModelVersionRequest:
    """The request; InvalidInput for a count below 1 (the server reads 0 as its default)."""
    for name, value in (("batch_size", batch_size), ("runs", runs)):
        if value < 1:
            raise InvalidInput(f"profile {name} must be >= 1, got {value}")
    return rpb.ProfileModelVersionRequest(model=model, version=version, batch_size=batch_size, runs=runs)


def profile_result_of(response: rpb.ProfileModelVersionResponse) -> ProfileResult:
    return ProfileResult(
        operators=tuple(operator_from_pb(o) for o in response.operators),
        chrome_trace=response.chrome_trace,
        mean_run_ms=response.mean_run_ms,
        providers=tuple(response.providers),
    )


def batching_of(b: mpb.BatchingConfig) -> Batching:
    return Batching(
        max_batch_size=b.max_batch_size if b.HasField("max_batch_size") else None,
        max_queue_delay_us=b.max_queue_delay_us,
        preferred_batch_sizes=tuple(b.preferred_batch_sizes),
        max_queue_size=b.max_queue_size,
        max_concurrent_batches=b.max_concurrent_batches,
    )


def batching_config(batching: Batching | None, max_batch_size: int | None) -> mpb.BatchingConfig | None:
    """The manifest's batching: `batching` whole, or only `max_batch_size` (not both)."""
    if batching is None:
        return mpb.BatchingConfig(max_batch_size=max_batch_size) if max_batch_size is not None else None
    if max_batch_size is not None:
        raise ValueError("pass max_batch_size inside batching, not both")
    return mpb.BatchingConfig(
        max_batch_size=batching.max_batch_size,
        max_queue_delay_us=batching.max_queue_delay_us,
        preferred_batch_sizes=batching.preferred_batch_sizes,
        max_queue_size=batching.max_queue_size,
        max_concurrent_batches=batching.max_concurrent_batches,
    )


def model_info_of(m: mpb.Model) -> ModelInfo:
    return ModelInfo(
        m.name,
        m.description,
        [version_info_of(v) for v in m.versions],
        {a.name: a.version for a in m.aliases},
        traffic_of(m.traffic) if m.HasField("traffic") else None,
        shadow_of(m.shadow) if m.HasField("shadow") else None,
    )


def stream_request(
    i: int,
    model: str,
    feeds: Inputs,
    *,
    version: str | int | None,
    outputs: Sequence[str],
    routing_key: str | None,
    priority: int,
) -> ipb.PredictStreamRequest:
    """Stream message `i` (its id) carrying one input set."""
    return ipb.PredictStreamRequest(
        id=str(i),
        request=predict_request(
            model, feeds, version=version, outputs=outputs, routing_key=routing_key, priority=priority
        ),
    )


def signature_request(model: str, version: str | int | None) -> ipb.GetModelSignatureRequest:
    return ipb.GetModelSignatureRequest(model=model, version="" if version is None else str(version))


def signature_info_of(model: str, response: ipb.GetModelSignatureResponse) -> VersionInfo:
    return version_info_of(
        mpb.ModelVersion(model=model, version=response.model_version, signature=response.signature)
    )


def stream_answer(answer: ipb.PredictStreamResponse) -> Prediction:
    if answer.WhichOneof("result") == "error":
        raise StreamMessageError(answer.id, answer.error.code, answer.error.message)
    return prediction_of(answer.response)


def predict_request(
    model: str,
    inputs: Inputs,
    *,
    version: str | int | None = None,
    outputs: Sequence[str] = (),
    routing_key: str | None = None,
    priority: int = 0,
) -> ipb.PredictRequest:
    return ipb.PredictRequest(
        model=model,
        version="" if version is None else str(version),
        inputs=[to_tensor(name, array) for name, array in inputs.items()],
        output_names=outputs,
        routing_key=routing_key or "",
        priority=priority,
    )


def register_manifest(
    name: str,
    size: int,
    *,
    sha256: str,
    description: str,
    labels: Mapping[str, str] | None,
    providers: Sequence[ProviderLike],
    max_batch_size: int | None,
    load: bool,
    batching: Batching | None = None,
    samples: Arrays | None = None,
) -> rpb.RegisterManifest:
    return rpb.RegisterManifest(
        name=name,
        size_bytes=size,
        sha256=sha256,
        description=description,
        labels=dict(labels or {}),
        providers=[mpb.ExecutionProvider(name=p.name, options=dict(p.options)) for p in to_specs(providers)],
        batching=batching_config(batching, max_batch_size),
        load=load,
        samples=[to_tensor(name, array) for name, array in (samples or {}).items()],
    )


def upload_requests(
    manifest: rpb.RegisterManifest, path: Path, progress: Progress | None
) -> Iterator[rpb.RegisterModelRequest]:
    """RegisterModel's messages: the manifest, then the file in CHUNK_BYTES chunks."""
    yield rpb.RegisterModelRequest(manifest=manifest)
    sent = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            yield rpb.RegisterModelRequest(chunk=chunk)
            sent += len(chunk)
            if progress is not None:
                progress(sent, manifest.size_bytes)


class Client:
    """A channel to one or more servers; errors surface as grpc.RpcError with the server's code.

    `address` is one gRPC target or several `host:port` (a list or one comma-separated string):
    calls are spread round robin and retried on UNAVAILABLE with exponential backoff per `retry`
    (None turns retries off), so a server that stops is skipped without a failed call.
    `tls=True` (or any certificate) uses TLS with the system roots or `root_certificates`;
    `certificate_chain` + `private_key` add a client certificate (mutual TLS); PEM values are
    bytes, PEM text or file paths. `token` sends `authorization: Bearer <token>` with every call.
    `timeout` (seconds) is the default deadline of the unary calls except register/load/unload.
    """

    def __init__(
        self,
        address: str | Sequence[str] = DEFAULT_ADDRESS,
        *,
        timeout: float | None = 30.0,
        tls: bool = False,
        root_certificates: PemSource | None = None,
        certificate_chain: PemSource | None = None,
        private_key: PemSource | None = None,
        server_name: str | None = None,
        token: str | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        retry: RetryPolicy | None = DEFAULT_RETRY,
        health_check: bool = False,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        plan = plan_channel(
            address,
            tls=tls,
            root_certificates=root_certificates,
            certificate_chain=certificate_chain,
            private_key=private_key,
            server_name=server_name,
            token=token,
            metadata=metadata,
            retry=retry,
            health_check=health_check,
            max_message_bytes=max_message_bytes,
            options=options,
        )
        self._channel = plan.blocking()
        self.target = plan.target
        self._metadata = plan.metadata
        self._inference = ipb_grpc.InferenceServiceStub(self._channel)
        self._registry = rpb_grpc.RegistryServiceStub(self._channel)
        self._timeout = timeout

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the channel has a connection (grpc.FutureTimeoutError after `timeout`)."""
        grpc.channel_ready_future(self._channel).result(timeout=timeout)

    def _deadline(self, timeout: float | None) -> float | None:
        return self._timeout if timeout is None else timeout

    # Inference

    def predict(
        self,
        model: str,
        inputs: Inputs,
        version: str | int | None = None,
        routing_key: str | None = None,
        timeout: float | None = None,
        *,
        outputs: Sequence[str] = (),
        priority: int = 0,
    ) -> Prediction:
        """One prediction: numpy arrays by input name in, outputs by name plus version and timing out.

        `version` None serves the latest ready version; `outputs` empty returns every output.
        """
        request = predict_request(
            model, inputs, version=version, outputs=outputs, routing_key=routing_key, priority=priority
        )
        response = self._inference.Predict(request, timeout=self._deadline(timeout), metadata=self._metadata)
        return prediction_of(response)

    def register_shared_memory(
        self, name: str, key: str, byte_size: int, offset: int = 0, *, timeout: float | None = None
    ) -> None:
        """Register `byte_size` bytes at `offset` of the POSIX shared memory object `key` ("/name")
        as region `name`, for this client's token; inputs then name it with `SharedTensor`.

        The server must run on the same host. Regions are the Open Inference Protocol's system
        shared memory: tritonclient's helpers and `ortserve.client` share them.
        """
        from ortserve.api.inference import grpc_service_pb2 as oip  # not at import: clashes with tritonclient

        request = oip.SystemSharedMemoryRegisterRequest(
            name=name, key=key, offset=offset, byte_size=byte_size
        )
        self._oip().SystemSharedMemoryRegister(
            request, timeout=self._deadline(timeout), metadata=self._metadata
        )

    def unregister_shared_memory(self, name: str = "", *, timeout: float | None = None) -> None:
        """Unregister region `name`, or every region of this client's token with an empty name."""
        from ortserve.api.inference import grpc_service_pb2 as oip

        request = oip.SystemSharedMemoryUnregisterRequest(name=name)
        self._oip().SystemSharedMemoryUnregister(
            request, timeout=self._deadline(timeout), metadata=self._metadata
        )

    def _oip(self) -> Any:
        from ortserve.api.inference import grpc_service_pb2_grpc as oip_grpc

        return oip_grpc.GRPCInferenceServiceStub(self._channel)

    def predict_stream(
        self,
        model: str,
        batches: Iterable[Inputs],
        version: str | int | None = None,
        routing_key: str | None = None,
        timeout: float | None = None,
        *,
        outputs: Sequence[str] = (),
        priority: int = 0,
    ) -> Iterator[Prediction]:
        """Send every input set over one stream; yield the answers in order.

        A message the server rejects raises StreamMessageError (with its id, the index of the
        input set); an exception from `batches` is raised once the answers to the sets before it
        are in; closing the generator early cancels the stream. `timeout` bounds the whole
        stream (default: none).
        """
        requests = Guarded(
            stream_request(
                i, model, feeds, version=version, outputs=outputs, routing_key=routing_key, priority=priority
            )
            for i, feeds in enumerate(batches)
        )
        call = self._inference.PredictStream(requests, timeout=timeout, metadata=self._metadata)
        try:
            for answer in call:
                yield stream_answer(answer)
            if requests.error is not None:
                raise requests.error
        finally:
            call.cancel()

    def signature(
        self, model: str, version: str | int | None = None, timeout: float | None = None
    ) -> VersionInfo:
        response = self._inference.GetModelSignature(
            signature_request(model, version), timeout=self._deadline(timeout), metadata=self._metadata
        )
        return signature_info_of(model, response)

    # Registry

    def register(
        self,
        path: str | os.PathLike[str],
        name: str,
        *,
        description: str = "",
        labels: Mapping[str, str] | None = None,
        providers: Sequence[ProviderLike] = (),
        max_batch_size: int | None = None,
        load: bool = True,
        progress: Progress | None = None,
        timeout: float | None = None,
        batching: Batching | None = None,
        samples: Arrays | None = None,
    ) -> VersionInfo:
        """Upload a model file in 1 MiB chunks as a new version; `progress(sent, total)` after each.

        With `load` the server that receives it loads and warms it up before answering.
        `batching` sets every batching setting; `max_batch_size` alone is its shorthand.
        `samples` (one array per input, rows along axis 0) are stored with the version: the server
        runs the model on them at registration and compares derived versions with it on them.
        `providers`, in order of preference: "CUDAExecutionProvider:device_id=0,gpu_mem_limit=2147483648"
        or "cuda" strings (ortserve.provider_specs), ProviderSpec values or (name, options) pairs.
        """
        path = Path(path)
        size, sha256 = hash_file(path)
        manifest = register_manifest(
            name,
            size,
            sha256=sha256,
            description=description,
            labels=labels,
            providers=providers,
            max_batch_size=max_batch_size,
            load=load,
            batching=batching,
            samples=samples,
        )
        requests = Guarded(upload_requests(manifest, path, progress))
        try:
            response = self._registry.RegisterModel(requests, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError:
            if requests.error is not None:  # the file could not be read: that, not the server's refusal
                raise requests.error from None
            raise
        return version_info_of(response.version)

    def list_models(self, *, page_size: int = 0, timeout: float | None = None) -> list[ModelInfo]:
        """Every model with its versions, following pages."""
        models: list[ModelInfo] = []
        token = ""
        while True:
            page = self._registry.ListModels(
                rpb.ListModelsRequest(page_size=page_size, page_token=token),
                timeout=self._deadline(timeout),
                metadata=self._metadata,
            )
            models.extend(model_info_of(m) for m in page.models)
            token = page.next_page_token
            if not token:
                return models

    def get_model(self, name: str, *, timeout: float | None = None) -> ModelInfo:
        response = self._registry.GetModel(
            rpb.GetModelRequest(name=name), timeout=self._deadline(timeout), metadata=self._metadata
        )
        return model_info_of(response.model)

    def list_versions(self, name: str, *, timeout: float | None = None) -> list[VersionInfo]:
        response = self._registry.ListModelVersions(
            rpb.ListModelVersionsRequest(name=name), timeout=self._deadline(timeout), metadata=self._metadata
        )
        return [version_info_of(v) for v in response.versions]

    def get_version(self, name: str, version: int, *, timeout: float | None = None) -> VersionInfo:
        response = self._registry.GetModelVersion(
            rpb.GetModelVersionRequest(name=name, version=version),
            timeout=self._deadline(timeout),
            metadata=self._metadata,
        )
        return version_info_of(response.version)

    def load(self, name: str, version: int = 0, *, timeout: float | None = None) -> VersionInfo:
        """Load and warm up a version (0: the latest) on the server that answers."""
        request = rpb.LoadModelVersionRequest(name=name, version=version)
        return version_info_of(
            self._registry.LoadModelVersion(request, timeout=timeout, metadata=self._metadata).version
        )

    def unload(self, name: str, version: int = 0, *, timeout: float | None = None) -> None:
        """Drain and unload a version (0: every loaded one) on the server that answers."""
        request = rpb.UnloadModelVersionRequest(name=name, version=version)
        self._registry.UnloadModelVersion(request, timeout=timeout, metadata=self._metadata)

    # --- derived versions and profiles ---------------------------------------------------------

    def derive(
        self,
        model: str,
        version: int,
        recipe: Recipe,
        *,
        gate: Gate | None = None,
        calibration: Arrays | None = None,
        description: str = "",
        load: bool = False,
        timeout: float | None = None,
    ) -> VersionInfo:
        """Build a new version of `model` from `version` with `recipe` (Optimize, Quantize, Fp16).

        The server compares it with its source on the stored samples (else generated inputs) and
        registers it with the report; a `gate` it misses raises FAILED_PRECONDITION and nothing is
        registered. `calibration` (one array per input) calibrates static quantization; without it
        the source's samples are used. `timeout` bounds the call (default: none).
        """
        request = derive_request(
            model, version, recipe, gate=gate, calibration=calibration, description=description, load=load
        )
        response = self._registry.DeriveModelVersion(request, timeout=timeout, metadata=self._metadata)
        return version_info_of(response.version)

    def optimize(
        self,
        model: str,
        version: int,
        level: str = "extended",
        simplify: bool = False,
        *,
        gate: Gate | None = None,
        description: str = "",
        load: bool = False,
        timeout: float | None = None,
    ) -> VersionInfo:
        """`derive` with ONNX Runtime's graph optimizations ("basic" or "extended"), then onnxslim."""
        recipe = Optimize(level=level, simplify=simplify)
        return self.derive(
            model, version, recipe, gate=gate, description=description, load=load, timeout=timeout
        )

    def quantize(
        self,
        model: str,
        version: int,
        mode: str = "dynamic",
        per_channel: bool = False,
        calibration: Arrays | None = None,
        *,
        gate: Gate | None = None,
        description: str = "",
        load: bool = False,
        timeout: float | None = None,
    ) -> VersionInfo:
        """`derive` with int8 quantization, "dynamic" or "static" (calibrated on `calibration`)."""
        return self.derive(
            model,
            version,
            Quantize(mode=mode, per_channel=per_channel),
            gate=gate,
            calibration=calibration,
            description=description,
            load=load,
            timeout=timeout,
        )

    def fp16(
        self,
        model: str,
        version: int,
        fp16_io: bool = False,
        *,
        gate: Gate | None = None,
        description: str = "",
        load: bool = False,
        timeout: float | None = None,
    ) -> VersionInfo:
        """`derive` converting float32 to float16 (`fp16_io`: the inputs and outputs too)."""
        recipe = Fp16(fp16_io=fp16_io)
        return self.derive(
            model, version, recipe, gate=gate, description=description, load=load, timeout=timeout
        )

    def profile(
        self, model: str, version: int, batch_size: int = 1, runs: int = 10, *, timeout: float | None = None
    ) -> ProfileResult:
        """Run ONNX Runtime's profiler on `version` (`runs` runs of `batch_size` rows of its samples)."""
        request = profile_request(model, version, batch_size, runs)
        response = self._registry.ProfileModelVersion(request, timeout=timeout, metadata=self._metadata)
        return profile_result_of(response)

    # --- rollout --------------------------------------------------------------------------

    def _admin(self, rpc: Any, request: Any, timeout: float | None) -> Any:
        return rpc(request, timeout=self._deadline(timeout), metadata=self._metadata)

    def promote(
        self, name: str, version: int, *, alias: str = "production", timeout: float | None = None
    ) -> AliasInfo:
        """Point `alias` (default production) at `version`; returns once it is warm on the server."""
        return self.set_alias(name, alias, version, timeout=timeout)

    def set_alias(self, name: str, alias: str, version: int, *, timeout: float | None = None) -> AliasInfo:
        request = rpb.SetAliasRequest(name=name, alias=alias, version=version)
        return alias_of(self._admin(self._registry.SetAlias, request, timeout).alias)

    def delete_alias(self, name: str, alias: str, *, timeout: float | None = None) -> None:
        self._admin(self._registry.DeleteAlias, rpb.DeleteAliasRequest(name=name, alias=alias), timeout)

    def rollback(self, name: str, *, alias: str = "production", timeout: float | None = None) -> AliasInfo:
        """Point `alias` back at the version it followed before its last change."""
        return alias_of(
            self._admin(self._registry.Rollback, rpb.RollbackRequest(name=name, alias=alias), timeout).alias
        )

    def set_traffic(
        self,
        name: str,
        weights: Mapping[str | int, int],
        *,
        sticky: bool = False,
        timeout: float | None = None,
    ) -> TrafficInfo:
        """Weighted split over versions or aliases, e.g. {3: 90, 4: 10}; {} removes the split."""
        response = self._admin(
            self._registry.SetTrafficPolicy, traffic_request(name, weights, sticky), timeout
        )
        return traffic_of(response.policy)

    def set_shadow(
        self, name: str, target: str | int, share: float, *, timeout: float | None = None
    ) -> TrafficInfo:
        """Copy `share` of requests to `target` and compare; share 0 removes the shadow."""
        request = rpb.SetShadowRequest(name=name, target=str(target), share=share)
        return traffic_of(self._admin(self._registry.SetShadow, request, timeout).policy)

    def retire(self, name: str, version: int, *, timeout: float | None = None) -> VersionInfo:
        request = rpb.RetireModelVersionRequest(name=name, version=version)
        return version_info_of(self._admin(self._registry.RetireModelVersion, request, timeout).version)

    def audit(self, name: str = "", *, limit: int = 100, timeout: float | None = None) -> list[AuditEntry]:
        """Registry changes, most recent first."""
        response = self._admin(
            self._registry.ListAuditEvents, rpb.ListAuditEventsRequest(name=name, limit=limit), timeout
        )
        return [audit_of(e) for e in response.events]

    def watch(self, names: Sequence[str] = ()) -> Iterator[ModelEvent]:
        """Registry changes and load events as they happen, until the caller stops iterating."""
        stream = self._registry.WatchModels(rpb.WatchModelsRequest(names=names), metadata=self._metadata)
        try:
            for message in stream:
                yield event_of(message.event)
        finally:
            stream.cancel()
