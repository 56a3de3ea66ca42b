"""inference.GRPCInferenceService (Open Inference Protocol + Triton extensions) over the same core.

Thin methods: oip_convert does the conversions, the core and the control plane do the work,
domain errors go to the interceptor. tritonclient.grpc works against it unchanged.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
from collections.abc import AsyncIterator

from ortserve.api.inference import grpc_service_pb2 as pb
from ortserve.api.inference import grpc_service_pb2_grpc as pb_grpc
from ortserve.control import ControlPlane
from ortserve.errors import FailedPrecondition, InvalidInput, NotFound, OrtserveError
from ortserve.records import Manifest, VersionState
from ortserve.registry.service import MAX_CHUNK_BYTES
from ortserve.scheduler.inference import InferenceCore
from ortserve.scheduler.pool import VersionSlot
from ortserve.scheduler.routing import is_number
from ortserve.scheduler.shm import Region
from ortserve.server import oip_convert as convert
from ortserve.server.auth import CALLER
from ortserve.server.failures import Failures
from ortserve.server.rpc import Context
from ortserve.server.streams import ordered_answers

SERVER_NAME = "ortserve"
STREAM_METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"
EXTENSIONS = (
    "model_repository",
    "model_configuration",
    "system_shared_memory",
    "statistics",
    "binary_tensor_data",
    "parameters",
)


class OipServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The Open Inference Protocol front of `core` (inference) and `control` (repository)."""

    def __init__(self, core: InferenceCore, control: ControlPlane, failures: Failures) -> None:
        self._core = core
        self._failures = failures
        self._pool = core.pool
        self._control = control
        self._shm = core.shared_memory
        self._metadata = pb.ServerMetadataResponse(
            name=SERVER_NAME, version=importlib.metadata.version("ortserve"), extensions=EXTENSIONS
        )

    # -- health and metadata ---------------------------------------------------------------------

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> pb.ServerReadyResponse:
        """Ready whenever it answers: the gRPC server starts after the registry has been read."""
        return pb.ServerReadyResponse(ready=True)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Context
    ) -> pb.ServerMetadataResponse:
        return self._metadata

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> pb.ModelReadyResponse:
        """Whether a request with this name and version would be served now.

        Like Triton, never an error for a well-formed request: an unknown model, an unknown or
        malformed version and a version that is not loaded all answer ready=false. Version ""
        means the latest ready version. Only an empty name is INVALID_ARGUMENT.
        """
        if not request.name:
            raise InvalidInput("request names no model")
        try:
            self._pool.resolve(request.name, request.version)
        except OrtserveError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Context
    ) -> pb.ModelMetadataResponse:
        """Signature of the version ("" = latest ready, else latest registered) and every version number."""
        slot = self._describe(request.name, request.version)
        versions = [s.record.version for s in self._pool.versions(request.name)]
        return convert.model_metadata(slot.record, versions)

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: Context) -> pb.ModelConfigResponse:
        return pb.ModelConfigResponse(
            config=convert.model_config(self._describe(request.name, request.version))
        )

    def _describe(self, model: str, version: str) -> VersionSlot:
        """The version metadata and config describe; unlike inference it need not be loaded."""
        if not model:
            raise InvalidInput("request names no model")
        if version:
            if not is_number(version):
                raise NotFound(f"model {model!r} has no version {version!r}; a version is a positive number")
            return self._pool.slot(model, int(version))
        slots = self._pool.versions(model)
        ready = [s for s in slots if s.state is VersionState.READY]
        return (ready or slots)[-1]

    # -- inference -------------------------------------------------------------------------------

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context) -> pb.ModelInferResponse:
        call = convert.predict_call(request, context.time_remaining(), self._region)
        places = convert.output_places(request, self._region) if request.outputs else None
        return convert.infer_response(await self._core.predict(call), request.id, places)

    def _region(self, name: str) -> Region:
        """The calling token's region `name` (one owner "" without tokens)."""
        return self._shm.region(CALLER.get(), name)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Answers in request order; a failed request answers `error_message` and the stream goes on.

        Every answer is final (ortserve models are not decoupled), so a request that sets
        `triton_enable_empty_final_response` gets `triton_final_response`=true on its one answer,
        as Triton does for non-decoupled models, and no extra empty response.
        """
        async for response in ordered_answers(request_iterator, self._stream_answer):
            yield response

    async def _stream_answer(self, request: pb.ModelInferRequest) -> pb.ModelStreamInferResponse:
        final_flag = convert.wants_final_flag(request)
        try:
            call = convert.predict_call(request, None, self._region)
            places = convert.output_places(request, self._region) if request.outputs else None
            response = convert.infer_response(await self._core.predict(call), request.id, places)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            message = self._failures.stream_message(STREAM_METHOD, exc)[1]
            return convert.stream_error(request, message, final_flag)
        answer = pb.ModelStreamInferResponse(infer_response=response)
        if final_flag:
            answer.infer_response.parameters[convert.FINAL_RESPONSE].bool_param = True
        return answer

    # -- statistics and repository ---------------------------------------------------------------

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: Context
    ) -> pb.ModelStatisticsResponse:
        """Empty name: every loaded version of all models; empty version: the loaded versions of the model."""
        if request.version:
            if not request.name:
                raise InvalidInput("a statistics request that names a version must name the model")
            slots = [self._describe(request.name, request.version)]
        else:
            candidates = self._pool.versions(request.name) if request.name else self._pool.slots()
            slots = [s for s in candidates if s.state is VersionState.READY]
        return pb.ModelStatisticsResponse(model_stats=[convert.model_statistics(s) for s in slots])

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Context
    ) -> pb.RepositoryIndexResponse:
        """Every registered version that is not retired; with `ready`, only the READY ones."""
        await self._control.refresh()
        slots = self._pool.slots()
        if request.ready:
            slots = [s for s in slots if s.state is VersionState.READY]
        return pb.RepositoryIndexResponse(models=[convert.index_entry(s) for s in slots])

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> pb.RepositoryModelLoadResponse:
        """Load the latest registered version, or register and load the bytes of a `file:` parameter.

        A `config` parameter is accepted and ignored: settings come from the registry.
        """
        model = request.model_name
        if not model:
            raise InvalidInput("request names no model")
        data = convert.uploaded_model(model, request.parameters)
        if data is None:
            await self._control.load(model, 0)
        else:
            await self._register(model, data)
        return pb.RepositoryModelLoadResponse()

    async def _register(self, model: str, data: bytes) -> None:
        digest = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
        manifest = Manifest(name=model, size_bytes=len(data), sha256=digest, created_by="oip:load_model")
        slot = await self._control.register(manifest, _chunks(data), load=True)
        if slot.state is not VersionState.READY:
            raise FailedPrecondition(
                f"model {model!r} version {slot.record.version} was registered but did not load: {slot.error}"
            )

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> pb.RepositoryModelUnloadResponse:
        """Unload every version of the model (`unload_dependents` has nothing to act on)."""
        if not request.model_name:
            raise InvalidInput("request names no model")
        await self._control.unload(request.model_name, 0)
        return pb.RepositoryModelUnloadResponse()

    # -- system shared memory --------------------------------------------------------------------

    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: Context
    ) -> pb.SystemSharedMemoryRegisterResponse:
        self._shm.register(CALLER.get(), request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest, context: Context
    ) -> pb.SystemSharedMemoryStatusResponse:
        """The caller's regions; a name that is not registered is NOT_FOUND."""
        response = pb.SystemSharedMemoryStatusResponse()
        for region in self._shm.status(CALLER.get(), request.name):
            response.regions[region.name].CopyFrom(
                pb.SystemSharedMemoryStatusResponse.RegionStatus(
                    name=region.name, key=region.key, offset=region.offset, byte_size=region.byte_size
                )
            )
        return response

    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: Context
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        """One region, or every region of the caller for an empty name; an unknown name is a no-op."""
        self._shm.unregister(CALLER.get(), request.name)
        return pb.SystemSharedMemoryUnregisterResponse()


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(data), MAX_CHUNK_BYTES):
        yield bytes(view[start : start + MAX_CHUNK_BYTES])


__all__ = ["OipServicer"]
