"""The one real server the fuzz tests talk to, the answers they accept, and the cases they count.

Every answer must carry a status other than INTERNAL or UNKNOWN and a text with no filesystem
path, traceback or ONNX Runtime internals; after every batch of cases a good request succeeds and
health is SERVING.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, settings
from onnx import TensorProto

from ortserve.api.inference import grpc_service_pb2_grpc as oip_grpc
from ortserve.api.v1 import inference_service_pb2 as ipb
from ortserve.api.v1 import inference_service_pb2_grpc as ipb_grpc
from ortserve.api.v1 import registry_service_pb2_grpc as rpb_grpc
from ortserve.api.v1 import tensor_pb2 as tpb
from ortserve.config import MiB, ServerConfig
from ortserve.server.app import OrtServer
from ortserve.server.errors import INTERNAL_MESSAGE
from tests import onnx_models

# Cases tried, by what was fuzzed ("hypothesis:Predict", "bytes:/pkg.Service/Method", "atheris").
CASES: Counter[str] = Counter()
# How those cases were answered: (kind, status code name) -> answers.
OUTCOMES: Counter[tuple[str, str]] = Counter()
# ORTSERVE_FUZZ_SCALE=10 runs ten times as many cases (a longer local run; CI runs 1).
SCALE = float(os.environ.get("ORTSERVE_FUZZ_SCALE", "1"))
CALL_TIMEOUT_S = 10.0
MAX_MESSAGE_BYTES = 4 * MiB
CHECK_EVERY = 25  # cases between two good requests inside one test

MODELS = {
    "linear": onnx_models.linear,  # x FP32 [N, 16] -> y FP32 [N, 4]
    "add": onnx_models.add,  # a, b FP32 [N, 4] -> z
    "strings": lambda p: onnx_models.identity(p, elem=TensorProto.STRING, shape=("N",)),  # x -> y
    "gather": onnx_models.gather,  # data FP32 [N, 4], idx INT64 [N, 1] -> out
}

# Any of these in a caller-visible text means something internal leaked.
_LEAKS = [
    r"(?:^|[\s'\"(=:,\[])/[\w.-]+/",  # an absolute path (no caller-chosen name holds a "/")
    r"\.py\b",
    r"site-packages",
    r"ortserve-data",
    r"Traceback",
    r"File \"",
    r"\[ONNXRuntimeError\]",
    r"onnxruntime::",
    r"\bstd::",
    r"<class '",
]
_BAD_CODES = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
_BAD_NAMES = {code.name for code in _BAD_CODES}
_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


@dataclass
class FuzzServer:
    server: OrtServer
    channel: aio.Channel
    inference: ipb_grpc.InferenceServiceStub
    registry: rpb_grpc.RegistryServiceStub
    oip: oip_grpc.GRPCInferenceServiceStub
    health: health_pb2_grpc.HealthStub
    leaks: re.Pattern[str]
    # INTERNAL answers the server had counted at the last check (each one fails a check once).
    internal_seen: dict[str, float] = field(default_factory=dict)

    @property
    def address(self) -> str:
        """For tests.server_calls.upload: RegisterModel over a blocking channel, whose refusals keep
        the server's status (grpc.aio's can turn them into CLIENT_WRITE_RACE)."""
        return f"127.0.0.1:{self.server.port}"

    async def assert_healthy(self) -> None:
        """A good request succeeds and health is SERVING, for the server and for the model."""
        request = ipb.PredictRequest(model="linear", inputs=[good_linear_input(2)])
        response = await self.inference.Predict(request, timeout=CALL_TIMEOUT_S)
        assert [list(t.shape) for t in response.outputs] == [[2, 4]], response
        for service in ("", "linear"):
            check = health_pb2.HealthCheckRequest(service=service)
            answer = await self.health.Check(check, timeout=CALL_TIMEOUT_S)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, (service, answer)
        before, self.internal_seen = self.internal_seen, self.internal_answers()
        assert self.internal_seen == before, f"the server answered INTERNAL: {self.internal_seen}"

    async def count(self, kind: str, *outcomes: str) -> None:
        """Count one case and how it was answered (a status code name per answer); every
        CHECK_EVERY cases of a kind, check that the server still serves."""
        CASES[kind] += 1
        OUTCOMES.update((kind, outcome) for outcome in outcomes)
        if CASES[kind] % CHECK_EVERY == 0:
            await self.assert_healthy()

    def assert_clean_text(self, text: str, what: str) -> None:
        found = leaked(text, self.leaks)
        assert found is None, f"{what}: {found} reaches the caller: {text!r}"

    def assert_clean_error(self, error: aio.AioRpcError, what: str) -> None:
        code, details = error.code(), error.details() or ""
        if _client_write_race(error):
            return  # the server's own count of INTERNAL answers is checked in assert_healthy
        assert code not in _BAD_CODES, f"{what}: {code.name}: {details!r}"
        self.assert_clean_text(details, what)

    def internal_answers(self) -> dict[str, float]:
        """RPCs the server itself answered INTERNAL or UNKNOWN, by method (from its metrics)."""
        found: dict[str, float] = {}
        for metric in self.server.parts.metrics.registry.collect():
            for sample in metric.samples:
                if sample.name == "ortserve_rpc_total" and sample.labels.get("code") in _BAD_NAMES:
                    method = sample.labels["method"]
                    found[method] = found.get(method, 0.0) + sample.value
        return {method: count for method, count in found.items() if count}

    def assert_clean_code(self, code: int, message: str, what: str) -> None:
        """An in-band StreamError: a google.rpc.Code value and a message."""
        assert code not in (c.value[0] for c in _BAD_CODES), f"{what}: code {code}: {message!r}"
        assert code != grpc.StatusCode.OK.value[0], f"{what}: an error with code OK: {message!r}"
        self.assert_clean_text(message, what)


def code_name(value: int) -> str:
    """The name of a google.rpc.Code value, as an in-band StreamError carries it."""
    return _CODE_NAMES.get(value, f"code {value}")


def outcome(error: aio.AioRpcError) -> str:
    """The code name to count for a failed call; grpc#36066's client-side INTERNAL is named apart."""
    return "CLIENT_WRITE_RACE" if _client_write_race(error) else error.code().name


def budget(examples: int) -> settings:
    """`examples` (times SCALE) cases, no deadline (a loaded CI machine is slow), no example database."""
    return settings(
        max_examples=max(1, int(examples * SCALE)),
        deadline=None,
        database=None,
        # One server serves every example on purpose: the point is that it survives them all.
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


def _client_write_race(error: aio.AioRpcError) -> bool:
    """grpc.aio's client, not the server: when the server ends a client-streaming call while the
    client still writes, the failed write replaces the server's status with INTERNAL "Internal
    error from Core" (grpc/grpc#36066, fix proposed in grpc/grpc#43486)."""
    return (
        error.code() is grpc.StatusCode.INTERNAL
        and error.details() == "Internal error from Core"
        and "execute_batch" in (error.debug_error_string() or "")
    )


def good_linear_input(rows: int) -> tpb.Tensor:
    x = np.arange(rows * 16, dtype=np.float32).reshape(rows, 16)
    return tpb.Tensor(name="x", data_type=tpb.DATA_TYPE_FP32, shape=x.shape, raw_data=x.tobytes())


def leaked(text: str, leaks: re.Pattern[str]) -> str | None:
    """What in `text` should not reach a caller, or None."""
    found = leaks.search(text)
    if found is not None:
        return f"the internal detail {found.group(0)!r}"
    if text.startswith(INTERNAL_MESSAGE):
        return "an internal error"
    return None


def leak_pattern(*private: Path) -> re.Pattern[str]:
    """The leak markers above plus this run's own directories, however they are spelled."""
    paths = [re.escape(str(p.resolve())) for p in private] + [re.escape(str(p)) for p in private]
    return re.compile("|".join([*_LEAKS, *paths]))


async def start(tmp: Path) -> FuzzServer:
    """A server on 127.0.0.1:0 with the tiny MODELS registered and loaded."""
    config = ServerConfig(
        port=0,
        metrics_port=0,
        data_dir=str(tmp / "data"),
        max_message_bytes=MAX_MESSAGE_BYTES,
        log_level="error",
    )
    server = OrtServer(config)
    for name, build in MODELS.items():
        path = tmp / f"{name}.onnx"
        build(path)
        server.parts.control.registry.register_file(path, name)
    port = await server.start()
    options = [("grpc.max_send_message_length", 64 * MiB), ("grpc.max_receive_message_length", 64 * MiB)]
    channel = aio.insecure_channel(f"127.0.0.1:{port}", options=options)
    return FuzzServer(
        server,
        channel,
        ipb_grpc.InferenceServiceStub(channel),
        rpb_grpc.RegistryServiceStub(channel),
        oip_grpc.GRPCInferenceServiceStub(channel),
        health_pb2_grpc.HealthStub(channel),
        leak_pattern(tmp, Path.cwd()),
    )


async def stop(running: FuzzServer) -> None:
    await running.channel.close()
    await running.server.stop(0)
