"""asyncio client for ortserve.api.v1: `AsyncClient` mirrors `Client` over grpc.aio."""

# `timeout` parameters are gRPC deadlines (sent to the server), not asyncio timeouts.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from ortserve.api.v1 import inference_service_pb2 as ipb
from ortserve.api.v1 import inference_service_pb2_grpc as ipb_grpc
from ortserve.api.v1 import registry_service_pb2 as rpb
from ortserve.api.v1 import registry_service_pb2_grpc as rpb_grpc
from ortserve.client.bridge import Answers, Guarded, awaited, on_loop, request_source
from ortserve.client.channel import DEFAULT_ADDRESS, MAX_MESSAGE_BYTES, PemSource, RetryPolicy, plan_channel
from ortserve.client.client import (
    DEFAULT_RETRY,
    Arrays,
    Batching,
    Inputs,
    ModelInfo,
    Prediction,
    ProfileResult,
    Progress,
    VersionInfo,
    derive_request,
    model_info_of,
    predict_request,
    prediction_of,
    profile_request,
    profile_result_of,
    register_manifest,
    signature_info_of,
    signature_request,
    stream_answer,
    stream_request,
    upload_requests,
    version_info_of,
)
from ortserve.client.rollout import (
    AliasInfo,
    AuditEntry,
    ModelEvent,
    TrafficInfo,
    alias_of,
    audit_of,
    event_of,
    traffic_of,
    traffic_request,
)
from ortserve.provider_specs import ProviderLike
from ortserve.store.digest import hash_file
from ortserve.toolkit.recipes import Fp16, Gate, Optimize, Quantize, Recipe


class AsyncClient:
    """`Client` for asyncio: the same constructor options and methods, awaited.

    `predict_stream` is an async iterator and accepts the input sets as an iterable or an
    async iterable. Errors surface as grpc.aio.AioRpcError (a grpc.RpcError).
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
        self._plan = plan
        self._channel = plan.asyncio()
        self._blocking_channel: grpc.Channel | None = None  # see _blocking
        self.target = plan.target
        self._metadata = grpc.aio.Metadata(*plan.metadata)
        self._inference = ipb_grpc.InferenceServiceStub(self._channel)
        self._registry = rpb_grpc.RegistryServiceStub(self._channel)
        self._timeout = timeout

    async def close(self) -> None:
        await self._channel.close()
        if self._blocking_channel is not None:
            self._blocking_channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the channel has a connection (TimeoutError after `timeout`)."""
        await asyncio.wait_for(self._channel.channel_ready(), timeout)

    def _blocking(self) -> grpc.Channel:
        """A blocking channel to the same servers, opened on first use, for the calls that stream
        requests (RegisterModel, PredictStream): grpc.aio's client can report INTERNAL instead of
        the server's status when the server ends them while the client writes (client/bridge.py)."""
        if self._blocking_channel is None:
            self._blocking_channel = self._plan.blocking()
        return self._blocking_channel

    def _deadline(self, timeout: float | None) -> float | None:
        return self._timeout if timeout is None else timeout

    # Inference

    async def predict(
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
        """See `Client.predict`."""
        request = predict_request(
            model, inputs, version=version, outputs=outputs, routing_key=routing_key, priority=priority
        )
        response = await self._inference.Predict(
            request, timeout=self._deadline(timeout), metadata=self._metadata
        )
        return prediction_of(response)

    async def predict_stream(
        self,
        model: str,
        batches: Iterable[Inputs] | AsyncIterable[Inputs],
        version: str | int | None = None,
        routing_key: str | None = None,
        timeout: float | None = None,
        *,
        outputs: Sequence[str] = (),
        priority: int = 0,
    ) -> AsyncIterator[Prediction]:
        """See `Client.predict_stream`: yields answers in order, raises StreamMessageError.

        An iterable is read on gRPC's request thread, an async iterable on the loop. An exception
        from `batches` is raised once the answers to the sets sent before it are in.
        """

        def request(i: int, feeds: Inputs) -> ipb.PredictStreamRequest:
            return stream_request(
                i, model, feeds, version=version, outputs=outputs, routing_key=routing_key, priority=priority
            )

        # On the blocking channel (see _blocking): gRPC's request thread reads the input sets, and a
        # thread of the stream's own hands the answers back.
        loop = asyncio.get_running_loop()
        requests = request_source(batches, request, loop)
        call = ipb_grpc.InferenceServiceStub(self._blocking()).PredictStream(
            requests, timeout=timeout, metadata=self._plan.metadata
        )
        answers: Answers[ipb.PredictStreamResponse] = Answers(call, loop)
        try:
            async for answer in answers:
                yield stream_answer(answer)
            if requests.error is not None:
                raise requests.error
        finally:
            answers.close()
            call.cancel()
            await requests.aclose()

    async def signature(
        self, model: str, version: str | int | None = None, timeout: float | None = None
    ) -> VersionInfo:
        response = await self._inference.GetModelSignature(
            signature_request(model, version), timeout=self._deadline(timeout), metadata=self._metadata
        )
        return signature_info_of(model, response)

    # Registry

    async def register(
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
        """See `Client.register`; the file is read off the event loop."""
        path = Path(path)
        size, sha256 = await asyncio.to_thread(hash_file, path)
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

        # On the blocking channel (see _blocking); the file is read and sent on gRPC's request thread.
        requests = Guarded(upload_requests(manifest, path, on_loop(progress)))
        call = rpb_grpc.RegistryServiceStub(self._blocking()).RegisterModel.future(
            requests, timeout=timeout, metadata=self._plan.metadata
        )
        try:
            response = await awaited(call)
        except grpc.RpcError:
            if requests.error is not None:  # the file could not be read: that, not the server's refusal
                raise requests.error from None
            raise
        return version_info_of(response.version)

    async def list_models(self, *, page_size: int = 0, timeout: float | None = None) -> list[ModelInfo]:
        models: list[ModelInfo] = []
        token = ""
        while True:
            page = await self._registry.ListModels(
                rpb.ListModelsRequest(page_size=page_size, page_token=token),
                timeout=self._deadline(timeout),
                metadata=self._metadata,
            )
            models.extend(model_info_of(m) for m in page.models)
            token = page.next_page_token
            if not token:
                return models

    async def get_model(self, name: str, *, timeout: float | None = None) -> ModelInfo:
        response = await self._registry.GetModel(
            rpb.GetModelRequest(name=name), timeout=self._deadline(timeout), metadata=self._metadata
        )
        return model_info_of(response.model)

    async def list_versions(self, name: str, *, timeout: float | None = None) -> list[VersionInfo]:
        response = await self._registry.ListModelVersions(
            rpb.ListModelVersionsRequest(name=name), timeout=self._deadline(timeout), metadata=self._metadata
        )
        return [version_info_of(v) for v in response.versions]

    async def get_version(self, name: str, version: int, *, timeout: float | None = None) -> VersionInfo:
        response = await self._registry.GetModelVersion(
            rpb.GetModelVersionRequest(name=name, version=version),
            timeout=self._deadline(timeout),
            metadata=self._metadata,
        )
        return version_info_of(response.version)

    async def load(self, name: str, version: int = 0, *, timeout: float | None = None) -> VersionInfo:
        request = rpb.LoadModelVersionRequest(name=name, version=version)
        response = await self._registry.LoadModelVersion(request, timeout=timeout, metadata=self._metadata)
        return version_info_of(response.version)

    async def unload(self, name: str, version: int = 0, *, timeout: float | None = None) -> None:
        request = rpb.UnloadModelVersionRequest(name=name, version=version)
        await self._registry.UnloadModelVersion(request, timeout=timeout, metadata=self._metadata)

    # --- derived versions and profiles ---------------------------------------------------------

    async def derive(
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
        """See `Client.derive`."""
        request = derive_request(
            model, version, recipe, gate=gate, calibration=calibration, description=description, load=load
        )
        response = await self._registry.DeriveModelVersion(request, timeout=timeout, metadata=self._metadata)
        return version_info_of(response.version)

    async def optimize(
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
        """See `Client.optimize`."""
        recipe = Optimize(level=level, simplify=simplify)
        return await self.derive(
            model, version, recipe, gate=gate, description=description, load=load, timeout=timeout
        )

    async def quantize(
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
        """See `Client.quantize`."""
        return await self.derive(
            model,
            version,
            Quantize(mode=mode, per_channel=per_channel),
            gate=gate,
            calibration=calibration,
            description=description,
            load=load,
            timeout=timeout,
        )

    async def fp16(
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
        """See `Client.fp16`."""
        recipe = Fp16(fp16_io=fp16_io)
        return await self.derive(
            model, version, recipe, gate=gate, description=description, load=load, timeout=timeout
        )

    async def profile(
        self, model: str, version: int, batch_size: int = 1, runs: int = 10, *, timeout: float | None = None
    ) -> ProfileResult:
        """See `Client.profile`."""
        request = profile_request(model, version, batch_size, runs)
        response = await self._registry.ProfileModelVersion(request, timeout=timeout, metadata=self._metadata)
        return profile_result_of(response)

    # --- rollout --------------------------------------------------------------------------

    async def _admin(self, rpc: Any, request: Any, timeout: float | None) -> Any:
        return await rpc(request, timeout=self._deadline(timeout), metadata=self._metadata)

    async def promote(
        self, name: str, version: int, *, alias: str = "production", timeout: float | None = None
    ) -> AliasInfo:
        return await self.set_alias(name, alias, version, timeout=timeout)

    async def set_alias(
        self, name: str, alias: str, version: int, *, timeout: float | None = None
    ) -> AliasInfo:
        request = rpb.SetAliasRequest(name=name, alias=alias, version=version)
        return alias_of((await self._admin(self._registry.SetAlias, request, timeout)).alias)

    async def delete_alias(self, name: str, alias: str, *, timeout: float | None = None) -> None:
        await self._admin(self._registry.DeleteAlias, rpb.DeleteAliasRequest(name=name, alias=alias), timeout)

    async def rollback(
        self, name: str, *, alias: str = "production", timeout: float | None = None
    ) -> AliasInfo:
        response = await self._admin(
            self._registry.Rollback, rpb.RollbackRequest(name=name, alias=alias), timeout
        )
        return alias_of(response.alias)

    async def set_traffic(
        self,
        name: str,
        weights: Mapping[str | int, int],
        *,
        sticky: bool = False,
        timeout: float | None = None,
    ) -> TrafficInfo:
        response = await self._admin(
            self._registry.SetTrafficPolicy, traffic_request(name, weights, sticky), timeout
        )
        return traffic_of(response.policy)

    async def set_shadow(
        self, name: str, target: str | int, share: float, *, timeout: float | None = None
    ) -> TrafficInfo:
        request = rpb.SetShadowRequest(name=name, target=str(target), share=share)
        return traffic_of((await self._admin(self._registry.SetShadow, request, timeout)).policy)

    async def retire(self, name: str, version: int, *, timeout: float | None = None) -> VersionInfo:
        request = rpb.RetireModelVersionRequest(name=name, version=version)
        return version_info_of(
            (await self._admin(self._registry.RetireModelVersion, request, timeout)).version
        )

    async def audit(
        self, name: str = "", *, limit: int = 100, timeout: float | None = None
    ) -> list[AuditEntry]:
        request = rpb.ListAuditEventsRequest(name=name, limit=limit)
        return [
            audit_of(e) for e in (await self._admin(self._registry.ListAuditEvents, request, timeout)).events
        ]

    async def watch(self, names: Sequence[str] = ()) -> AsyncIterator[ModelEvent]:
        """Registry changes and load events as they happen, until the caller stops iterating."""
        stream = self._registry.WatchModels(rpb.WatchModelsRequest(names=names), metadata=self._metadata)
        try:
            async for message in stream:
                yield event_of(message.event)
        finally:
            stream.cancel()
