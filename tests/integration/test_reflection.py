"""Server reflection answers on the asyncio server (its servicer is registered through the RPC
interceptor's registrar, which is not an aio.Server: the asyncio servicer is chosen by name)."""

from __future__ import annotations

from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.integration.conftest import Running


async def test_reflection_lists_the_services(running: Running) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(running.channel)
    call = stub.ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    response = await call.read()
    await call.done_writing()
    names = {s.name for s in response.list_services_response.service}
    assert {
        "ortserve.api.v1.InferenceService",
        "ortserve.api.v1.RegistryService",
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
    } <= names, names


async def test_reflection_describes_a_symbol(running: Running) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(running.channel)
    call = stub.ServerReflectionInfo()
    await call.write(
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="ortserve.api.v1.InferenceService")
    )
    response = await call.read()
    await call.done_writing()
    assert response.file_descriptor_response.file_descriptor_proto, response
