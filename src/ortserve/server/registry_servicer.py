"""ortserve.api.v1.RegistryService: convert, delegate to the control plane, convert back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from ortserve.api.v1 import model_pb2 as mpb
from ortserve.api.v1 import registry_service_pb2 as rpb
from ortserve.api.v1 import registry_service_pb2_grpc as rpb_grpc
from ortserve.control import ControlPlane
from ortserve.errors import InvalidInput
from ortserve.registry.records import ModelRecord, ModelVersionRecord
from ortserve.server import convert
from ortserve.server.rpc import Context

MAX_CHUNK_BYTES = 1 << 20


class RegistryServicer(rpb_grpc.RegistryServiceServicer):
    def __init__(self, control: ControlPlane) -> None:
        self._control = control
        self._registry = control.registry

    async def RegisterModel(
        self, request_iterator: AsyncIterator[rpb.RegisterModelRequest], context: Context
    ) -> rpb.RegisterModelResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("content") != "manifest":
            raise InvalidInput(
                "RegisterModel must start with a manifest message, then the model bytes in chunks"
            )
        manifest = convert.manifest_from_pb(first.manifest, created_by=context.peer())
        slot = await self._control.register(manifest, _chunks(request_iterator), load=first.manifest.load)
        return rpb.RegisterModelResponse(version=self._version(slot.record))

    async def GetModel(self, request: rpb.GetModelRequest, context: Context) -> rpb.GetModelResponse:
        record = await asyncio.to_thread(self._registry.get_model, request.name)
        return rpb.GetModelResponse(model=self._model(record))

    async def ListModels(self, request: rpb.ListModelsRequest, context: Context) -> rpb.ListModelsResponse:
        records, token = await asyncio.to_thread(
            self._registry.list_models, request.page_size or 100, request.page_token
        )
        return rpb.ListModelsResponse(models=[self._model(r) for r in records], next_page_token=token)

    async def ListModelVersions(
        self, request: rpb.ListModelVersionsRequest, context: Context
    ) -> rpb.ListModelVersionsResponse:
        records = await asyncio.to_thread(self._registry.list_versions, request.name)
        return rpb.ListModelVersionsResponse(versions=[self._version(r) for r in records])

    async def GetModelVersion(
        self, request: rpb.GetModelVersionRequest, context: Context
    ) -> rpb.GetModelVersionResponse:
        record = await asyncio.to_thread(self._registry.get_version, request.name, request.version)
        return rpb.GetModelVersionResponse(version=self._version(record))

    async def LoadModelVersion(
        self, request: rpb.LoadModelVersionRequest, context: Context
    ) -> rpb.LoadModelVersionResponse:
        slot = await self._control.load(request.name, request.version)
        return rpb.LoadModelVersionResponse(version=self._version(slot.record))

    async def UnloadModelVersion(
        self, request: rpb.UnloadModelVersionRequest, context: Context
    ) -> rpb.UnloadModelVersionResponse:
        await self._control.unload(request.name, request.version)
        return rpb.UnloadModelVersionResponse()

    def _version(self, record: ModelVersionRecord) -> mpb.ModelVersion:
        state, error, active = self._control.view(record)
        return convert.version_to_pb(record, state, error, active)

    def _model(self, record: ModelRecord) -> mpb.Model:
        return convert.model_to_pb(record, [self._version(v) for v in record.versions])


async def _chunks(requests: AsyncIterator[rpb.RegisterModelRequest]) -> AsyncIterator[bytes]:
    async for message in requests:
        if message.WhichOneof("content") != "chunk":
            raise InvalidInput("RegisterModel takes one manifest; every later message must be a chunk")
        if len(message.chunk) > MAX_CHUNK_BYTES:
            raise InvalidInput(
                f"chunk of {len(message.chunk)} bytes exceeds the limit of {MAX_CHUNK_BYTES} bytes"
            )
        yield message.chunk
