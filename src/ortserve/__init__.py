"""ortserve: a gRPC inference server for ONNX models with a multi-model registry."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ortserve")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["__version__"]
