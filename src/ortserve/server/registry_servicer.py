"""ortserve.api.v1.RegistryService: convert, delegate to the control plane, convert back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from ortserve.api.v1 import model_pb2 as mpb
from ortserve.api.v1 import registry_service_pb2 as rpb
from ortserve.api.v1 import registry_service_pb2_grpc as rpb_grpc
from ortserve.control import ControlPlane
from ortserve.errors import InvalidInput
from ortserve.records import (
    AliasRecord,
    ModelRecord,
    ModelVersionRecord,
    TrafficEntry,
    TrafficPolicy,
)
from ortserve.scheduler.inference import InferenceCore
from ortserve.server import convert
from ortserve.server.auth import CALLER
from ortserve.server.rpc import Context
from ortserve.toolkit import messages

MAX_AUDIT_EVENTS = 1000


class RegistryServicer(rpb_grpc.RegistryServiceServicer):
    def __init__(self, control: ControlPlane, core: InferenceCore) -> None:
        self._control = control
        self._registry = control.registry
        self._core = core

    async def RegisterModel(
        self, request_iterator: AsyncIterator[rpb.RegisterModelRequest], context: Context
    ) -> rpb.RegisterModelResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("content") != "manifest":
            raise InvalidInput(
                "RegisterModel must start with a manifest message, then the model bytes in chunks"
            )
        manifest = convert.manifest_from_pb(first.manifest, created_by=_actor(context))
        slot = await self._control.register(manifest, _chunks(request_iterator), load=first.manifest.load)
        return rpb.RegisterModelResponse(version=self._version(slot.record))

    async def DeriveModelVersion(
        self, request: rpb.DeriveModelVersionRequest, context: Context
    ) -> rpb.DeriveModelVersionResponse:
        _check_target(request.model, request.version)
        recipe = messages.recipe_from_pb(request.recipe)
        if recipe is None:
            raise InvalidInput("recipe must set one of optimize, quantize or fp16")
        slot = await self._control.derive(
            request.model,
            request.version,
            recipe,
            gate=messages.gate_from_pb(request.gate) if request.HasField("gate") else None,
            calibration=convert.samples_from_pb(request.calibration, "calibration input"),
            description=request.description,
            actor=_actor(context),
            load=request.load,
        )
        return rpb.DeriveModelVersionResponse(version=self._version(slot.record))

    async def ProfileModelVersion(
        self, request: rpb.ProfileModelVersionRequest, context: Context
    ) -> rpb.ProfileModelVersionResponse:
        _check_target(request.model, request.version)
        profile = await self._control.profile(
            request.model, request.version, request.batch_size or 1, request.runs or 10
        )
        return messages.profile_to_pb(profile)

    async def GetModel(self, request: rpb.GetModelRequest, context: Context) -> rpb.GetModelResponse:
        record = await asyncio.to_thread(self._registry.get_model, request.name)
        return rpb.GetModelResponse(model=await self._model(record))

    async def ListModels(self, request: rpb.ListModelsRequest, context: Context) -> rpb.ListModelsResponse:
        records, token = await asyncio.to_thread(
            self._registry.list_models, request.page_size, request.page_token
        )
        models = [await self._model(r) for r in records]
        return rpb.ListModelsResponse(models=models, next_page_token=token)

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

    async def SetAlias(self, request: rpb.SetAliasRequest, context: Context) -> rpb.SetAliasResponse:
        alias = await self._control.set_alias(request.name, request.alias, request.version, _actor(context))
        return rpb.SetAliasResponse(alias=convert.alias_to_pb(alias))

    async def DeleteAlias(self, request: rpb.DeleteAliasRequest, context: Context) -> rpb.DeleteAliasResponse:
        await self._control.delete_alias(request.name, request.alias, _actor(context))
        return rpb.DeleteAliasResponse()

    async def Rollback(self, request: rpb.RollbackRequest, context: Context) -> rpb.RollbackResponse:
        alias = await self._control.rollback(request.name, request.alias, _actor(context))
        return rpb.RollbackResponse(alias=convert.alias_to_pb(alias))

    async def SetTrafficPolicy(
        self, request: rpb.SetTrafficPolicyRequest, context: Context
    ) -> rpb.SetTrafficPolicyResponse:
        entries = [TrafficEntry(e.target, e.weight) for e in request.entries]
        policy = await self._control.set_traffic(request.name, entries, request.sticky, _actor(context))
        return rpb.SetTrafficPolicyResponse(policy=convert.policy_to_pb(policy))

    async def SetShadow(self, request: rpb.SetShadowRequest, context: Context) -> rpb.SetShadowResponse:
        policy = await self._control.set_shadow(request.name, request.target, request.share, _actor(context))
        return rpb.SetShadowResponse(policy=convert.policy_to_pb(policy))

    async def RetireModelVersion(
        self, request: rpb.RetireModelVersionRequest, context: Context
    ) -> rpb.RetireModelVersionResponse:
        record = await self._control.retire(request.name, request.version, _actor(context))
        return rpb.RetireModelVersionResponse(version=self._version(record))

    async def ListAuditEvents(
        self, request: rpb.ListAuditEventsRequest, context: Context
    ) -> rpb.ListAuditEventsResponse:
        limit = min(request.limit or 100, MAX_AUDIT_EVENTS)
        events = await asyncio.to_thread(self._registry.audit_events, request.name or None, limit)
        return rpb.ListAuditEventsResponse(events=[convert.audit_to_pb(e) for e in events])

    async def WatchModels(
        self, request: rpb.WatchModelsRequest, context: Context
    ) -> AsyncIterator[rpb.WatchModelsResponse]:
        names = set(request.names)
        async for event in self._control.pool.events.subscribe():
            if not names or event.model in names:
                yield rpb.WatchModelsResponse(event=convert.event_to_pb(event))

    def _version(self, record: ModelVersionRecord) -> mpb.ModelVersion:
        state, error, active = self._control.view(record)
        return convert.version_to_pb(record, state, error, active, self._control.fallback(record))

    async def _model(self, record: ModelRecord) -> mpb.Model:
        aliases, policy = await asyncio.to_thread(self._rollout, record.name)
        versions = [self._version(v) for v in record.versions]
        return convert.model_to_pb(record, versions, aliases, policy, self._core.shadows.get(record.name))

    def _rollout(self, name: str) -> tuple[list[AliasRecord], TrafficPolicy | None]:
        return self._registry.aliases(name), self._registry.traffic_policy(name)


def _actor(context: Context) -> str:
    """Who made a change, for the audit log: the token's name, else the caller's peer address."""
    return CALLER.get() or str(context.peer())


def _check_target(model: str, version: int) -> None:
    if not model:
        raise InvalidInput("model must name a registered model")
    if version < 1:
        raise InvalidInput(f"version must be a version number >= 1, got {version}")


async def _chunks(requests: AsyncIterator[rpb.RegisterModelRequest]) -> AsyncIterator[bytes]:
    async for message in requests:
        if message.WhichOneof("content") != "chunk":
            raise InvalidInput("RegisterModel takes one manifest; every later message must be a chunk")
        yield message.chunk
