"""The transport ceiling: a bare grpc.aio server with our InferenceService and no model.

Predict returns a PredictResponse whose outputs are the request's input tensors; PredictStream
answers each message the same way, in order. It parses and serializes the same messages ortserve
does, so the difference to ortserve is the server's own work (routing, validation, batching,
ONNX Runtime, metrics, logging).

    python bench/echo_server.py --port 0 --port-file /tmp/echo.port
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from grpc import aio

from ortserve.api.v1 import inference_service_pb2 as ipb
from ortserve.api.v1 import inference_service_pb2_grpc as ipb_grpc

MAX_MESSAGE_BYTES = 256 << 20


class EchoService(ipb_grpc.InferenceServiceServicer):
    async def Predict(self, request: ipb.PredictRequest, context: aio.ServicerContext) -> ipb.PredictResponse:  # type: ignore[override]
        return ipb.PredictResponse(outputs=request.inputs, model=request.model, model_version=1)

    async def PredictStream(  # type: ignore[override]
        self, request_iterator: AsyncIterator[ipb.PredictStreamRequest], context: aio.ServicerContext
    ) -> AsyncIterator[ipb.PredictStreamResponse]:
        async for message in request_iterator:
            r = message.request
            yield ipb.PredictStreamResponse(
                id=message.id, response=ipb.PredictResponse(outputs=r.inputs, model=r.model, model_version=1)
            )

    async def GetModelSignature(  # type: ignore[override]
        self, request: ipb.GetModelSignatureRequest, context: aio.ServicerContext
    ) -> ipb.GetModelSignatureResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the echo server has no models; pass --input")
        raise AssertionError


def _write_port(port_file: str, port: int) -> None:
    tmp = Path(port_file + ".tmp")
    tmp.write_text(str(port))
    tmp.replace(port_file)


async def serve(host: str, port: int, port_file: str | None) -> None:
    server = aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ]
    )
    ipb_grpc.add_InferenceServiceServicer_to_server(EchoService(), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    if port_file:
        _write_port(port_file, bound)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--port-file")
    args = p.parse_args()
    asyncio.run(serve(args.host, args.port, args.port_file))


if __name__ == "__main__":
    main()
