"""ortserve.api.v1.InferenceService: convert, delegate to the core, convert back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from ortserve.api.v1 import inference_service_pb2 as ipb
from ortserve.api.v1 import inference_service_pb2_grpc as ipb_grpc
from ortserve.scheduler.inference import InferenceCore
from ortserve.scheduler.shm import Region
from ortserve.server import convert
from ortserve.server.auth import CALLER
from ortserve.server.failures import Failures
from ortserve.server.rpc import Context
from ortserve.server.streams import ordered_answers

STREAM_METHOD = "/ortserve.api.v1.InferenceService/PredictStream"


class InferenceServicer(ipb_grpc.InferenceServiceServicer):
    def __init__(self, core: InferenceCore, failures: Failures) -> None:
        self._core = core
        self._failures = failures

    async def Predict(self, request: ipb.PredictRequest, context: Context) -> ipb.PredictResponse:
        result = await self._core.predict(
            convert.predict_call(request, context.time_remaining(), self._region)
        )
        return convert.predict_response(result)

    def _region(self, name: str) -> Region:
        """The calling token's shared memory region `name` (registered through the OIP RPCs)."""
        return self._core.shared_memory.region(CALLER.get(), name)

    async def PredictStream(
        self, request_iterator: AsyncIterator[ipb.PredictStreamRequest], context: Context
    ) -> AsyncIterator[ipb.PredictStreamResponse]:
        async for response in ordered_answers(request_iterator, self._answer):
            yield response

    async def _answer(self, message: ipb.PredictStreamRequest) -> ipb.PredictStreamResponse:
        try:
            result = await self._core.predict(convert.predict_call(message.request, None, self._region))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            code, text = self._failures.stream_message(STREAM_METHOD, exc)
            return ipb.PredictStreamResponse(
                id=message.id, error=ipb.StreamError(code=code.value[0], message=text)
            )
        answer = ipb.PredictStreamResponse(id=message.id)
        convert.fill_predict_response(answer.response, result)
        return answer

    async def GetModelSignature(
        self, request: ipb.GetModelSignatureRequest, context: Context
    ) -> ipb.GetModelSignatureResponse:
        slot = self._core.pool.resolve(request.model, request.version)
        return ipb.GetModelSignatureResponse(
            model=request.model,
            model_version=slot.record.version,
            signature=convert.signature_to_pb(slot.record.signature),
        )
