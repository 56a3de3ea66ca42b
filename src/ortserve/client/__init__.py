"""Python SDK: numpy in, numpy out, over ortserve's gRPC API. Needs neither onnxruntime nor SQLAlchemy."""

from ortserve.client.client import Client, ModelInfo, Prediction, StreamMessageError, VersionInfo

__all__ = ["Client", "ModelInfo", "Prediction", "StreamMessageError", "VersionInfo"]
