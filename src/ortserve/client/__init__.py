"""Python SDK: numpy in, numpy out, over ortserve's gRPC API. Needs neither onnxruntime nor SQLAlchemy.

`Client` (blocking) and `AsyncClient` (asyncio) take one or several server addresses (round robin,
retries on UNAVAILABLE with backoff), TLS / mutual TLS and a bearer token.
"""

from ortserve.client.aio import AsyncClient
from ortserve.client.channel import RetryPolicy
from ortserve.client.client import (
    Batching,
    Client,
    ModelInfo,
    Prediction,
    ProfileResult,
    SharedTensor,
    StreamMessageError,
    VersionInfo,
)
from ortserve.client.rollout import AliasInfo, AuditEntry, ModelEvent, ShadowInfo, TrafficInfo
from ortserve.toolkit.profile import OperatorTime
from ortserve.toolkit.recipes import Fp16, Gate, Optimize, Quantize
from ortserve.toolkit.report import EvaluationReport, OutputComparison

__all__ = [
    "AliasInfo",
    "AsyncClient",
    "AuditEntry",
    "Batching",
    "Client",
    "EvaluationReport",
    "Fp16",
    "Gate",
    "ModelEvent",
    "ModelInfo",
    "OperatorTime",
    "Optimize",
    "OutputComparison",
    "Prediction",
    "ProfileResult",
    "Quantize",
    "RetryPolicy",
    "ShadowInfo",
    "SharedTensor",
    "StreamMessageError",
    "TrafficInfo",
    "VersionInfo",
]
