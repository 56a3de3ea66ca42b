"""Synchronous client for ortserve.api.v1 (InferenceService and RegistryService)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from ortserve import dtypes, tensors
from ortserve.api.v1 import inference_service_pb2 as ipb
from ortserve.api.v1 import inference_service_pb2_grpc as ipb_grpc
from ortserve.api.v1 import model_pb2 as mpb
from ortserve.api.v1 import registry_service_pb2 as rpb
from ortserve.api.v1 import registry_service_pb2_grpc as rpb_grpc
from ortserve.api.v1 import tensor_pb2 as tpb

CHUNK_BYTES = 1 << 20
MAX_MESSAGE_BYTES = 256 << 20
_STATE_NAMES = {v: k.removeprefix("VERSION_STATE_").lower() for k, v in mpb.VersionState.items()}
_DTYPE_OF_ENUM = {
    tpb.DataType.Value("DATA_TYPE_" + ("STRING" if d is dtypes.BYTES else d.name)): d for d in dtypes.ALL
}
_ENUM_OF_DTYPE = {d: e for e, d in _DTYPE_OF_ENUM.items()}


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


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    description: str
    versions: list[VersionInfo]


def to_tensor(name: str, array: np.ndarray) -> tpb.Tensor:
    array = np.asarray(array)
    return tpb.Tensor(
        name=name, data_type=_ENUM_OF_DTYPE[dtypes.of_array(array)], shape=array.shape, raw_data=tensors.encode(array)
    )


def from_tensor(tensor: tpb.Tensor) -> np.ndarray:
    return tensors.decode(tensor.raw_data, _DTYPE_OF_ENUM[tensor.data_type], tensor.shape, f"output {tensor.name!r}")


def _prediction(response: ipb.PredictResponse) -> Prediction:
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


def _version_info(v: mpb.ModelVersion) -> VersionInfo:
    def specs(items: Sequence[tpb.TensorSpec]) -> list[tuple[str, str, list[int]]]:
        return [(s.name, _DTYPE_OF_ENUM[s.data_type].name, list(s.shape)) for s in items]

    return VersionInfo(
        model=v.model,
        version=v.version,
        state=_STATE_NAMES[v.state],
        error=v.error,
        sha256=v.sha256,
        size_bytes=v.size_bytes,
        inputs=specs(v.signature.inputs),
        outputs=specs(v.signature.outputs),
        providers=list(v.active_providers),
    )


def _model_info(m: mpb.Model) -> ModelInfo:
    return ModelInfo(m.name, m.description, [_version_info(v) for v in m.versions])


class Client:
    """One channel to one server. Errors surface as grpc.RpcError with the server's code and message."""

    def __init__(self, address: str = "127.0.0.1:8001", *, timeout: float | None = 30.0) -> None:
        options = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ]
        self._channel = grpc.insecure_channel(address, options=options)
        self._inference = ipb_grpc.InferenceServiceStub(self._channel)
        self._registry = rpb_grpc.RegistryServiceStub(self._channel)
        self._timeout = timeout

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def predict(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        version: str | int | None = None,
        *,
        outputs: Sequence[str] = (),
        routing_key: str = "",
        priority: int = 0,
        timeout: float | None = None,
    ) -> Prediction:
        request = _predict_request(model, inputs, version, outputs, routing_key, priority)
        return _prediction(self._inference.Predict(request, timeout=timeout or self._timeout))

    def predict_stream(
        self, model: str, batches: Iterator[Mapping[str, np.ndarray]], version: str | int | None = None
    ) -> Iterator[Prediction]:
        """Send every input set over one stream; yield answers in order. A failed message raises."""
        requests = (
            ipb.PredictStreamRequest(id=str(i), request=_predict_request(model, feeds, version, (), "", 0))
            for i, feeds in enumerate(batches)
        )
        for answer in self._inference.PredictStream(requests):
            if answer.WhichOneof("result") == "error":
                raise StreamMessageError(answer.id, answer.error.code, answer.error.message)
            yield _prediction(answer.response)

    def signature(self, model: str, version: str | int | None = None) -> VersionInfo:
        response = self._inference.GetModelSignature(
            ipb.GetModelSignatureRequest(model=model, version=str(version or "")), timeout=self._timeout
        )
        return _version_info(mpb.ModelVersion(model=model, version=response.model_version, signature=response.signature))

    def register(
        self,
        path: str | Path,
        name: str,
        *,
        description: str = "",
        labels: Mapping[str, str] | None = None,
        providers: Sequence[str] = (),
        max_batch_size: int | None = None,
        load: bool = True,
        progress: Callable[[int, int], None] | None = None,
    ) -> VersionInfo:
        """Upload a model file in 1 MiB chunks; `progress(sent, total)` is called after each."""
        data = Path(path).read_bytes()
        batching = mpb.BatchingConfig(max_batch_size=max_batch_size) if max_batch_size is not None else None
        manifest = rpb.RegisterManifest(
            name=name,
            size_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            description=description,
            labels=dict(labels or {}),
            providers=[mpb.ExecutionProvider(name=p) for p in providers],
            batching=batching,
            load=load,
        )
        response = self._registry.RegisterModel(_upload(manifest, data, progress), timeout=None)
        return _version_info(response.version)

    def list_models(self) -> list[ModelInfo]:
        models: list[ModelInfo] = []
        token = ""
        while True:
            page = self._registry.ListModels(rpb.ListModelsRequest(page_token=token), timeout=self._timeout)
            models.extend(_model_info(m) for m in page.models)
            token = page.next_page_token
            if not token:
                return models

    def get_model(self, name: str) -> ModelInfo:
        return _model_info(self._registry.GetModel(rpb.GetModelRequest(name=name), timeout=self._timeout).model)

    def load(self, name: str, version: int = 0) -> VersionInfo:
        request = rpb.LoadModelVersionRequest(name=name, version=version)
        return _version_info(self._registry.LoadModelVersion(request, timeout=None).version)

    def unload(self, name: str, version: int = 0) -> None:
        self._registry.UnloadModelVersion(rpb.UnloadModelVersionRequest(name=name, version=version), timeout=None)


class StreamMessageError(Exception):
    """One message of a PredictStream failed; the code is a grpc.StatusCode value."""

    def __init__(self, message_id: str, code: int, message: str) -> None:
        super().__init__(f"stream message {message_id}: {message}")
        self.message_id = message_id
        self.code = code
        self.message = message


def _predict_request(
    model: str,
    inputs: Mapping[str, np.ndarray],
    version: str | int | None,
    outputs: Sequence[str],
    routing_key: str,
    priority: int,
) -> ipb.PredictRequest:
    return ipb.PredictRequest(
        model=model,
        version="" if version is None else str(version),
        inputs=[to_tensor(name, array) for name, array in inputs.items()],
        output_names=outputs,
        routing_key=routing_key,
        priority=priority,
    )


def _upload(
    manifest: rpb.RegisterManifest, data: bytes, progress: Callable[[int, int], None] | None
) -> Iterator[rpb.RegisterModelRequest]:
    yield rpb.RegisterModelRequest(manifest=manifest)
    view = memoryview(data)
    for start in range(0, len(data), CHUNK_BYTES):
        chunk = view[start : start + CHUNK_BYTES]
        yield rpb.RegisterModelRequest(chunk=bytes(chunk))
        if progress is not None:
            progress(start + len(chunk), len(data))
