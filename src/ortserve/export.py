"""Export models to ONNX for ortserve: `from_torch` turns a PyTorch module into checked ONNX bytes."""

from ortserve.toolkit.export import from_torch

__all__ = ["from_torch"]
