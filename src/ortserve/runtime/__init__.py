"""ONNX Runtime: data types, signatures, model validation, sessions and providers."""
