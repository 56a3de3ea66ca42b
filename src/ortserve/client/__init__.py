"""Python SDK: numpy in, numpy out, over ortserve's gRPC API. Needs neither onnxruntime nor SQLAlchemy.

`Client` (blocking) and `AsyncClient` (asyncio) take one or several server addresses (round robin,
retries on UNAVAILABLE with backoff), TLS / mutual TLS and a bearer token.
"""

from ortserve.client.aio import AsyncClient
from ortserve.client.channel import RetryPolicy
from ortserve.client.client import Client, ModelInfo, Prediction, StreamMessageError, VersionInfo

__all__ = [
    "AsyncClient",
    "Client",
    "ModelInfo",
    "Prediction",
    "RetryPolicy",
    "StreamMessageError",
    "VersionInfo",
]
