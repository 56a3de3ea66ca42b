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
    SharedTensor,
    StreamMessageError,
    VersionInfo,
)
from ortserve.client.rollout import AliasInfo, AuditEntry, ModelEvent, ShadowInfo, TrafficInfo

__all__ = [
    "AliasInfo",
    "AsyncClient",
    "AuditEntry",
    "Batching",
    "Client",
    "ModelEvent",
    "ModelInfo",
    "Prediction",
    "RetryPolicy",
    "ShadowInfo",
    "SharedTensor",
    "StreamMessageError",
    "TrafficInfo",
    "VersionInfo",
]
