"""Custom operator libraries: shared libraries of ONNX Runtime operators registered on every session
and in the validation subprocess, with the operator domains models may use because of them.

ONNX Runtime cannot list the domains a library provides, so the operator names them
(`custom_op_domains`); onnxruntime-extensions provides `ai.onnx.contrib`.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from ortserve.errors import InvalidInput, logged

EXTENSIONS_DOMAIN = "ai.onnx.contrib"
# The native module onnxruntime-extensions' get_library_path() returns the file of.
_EXTENSIONS_MODULE = "_extensions_pydll"
log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class CustomOps:
    """Library paths (absolute) to register, the domains they add to the allowlist, and a digest of
    the libraries' bytes (part of the optimized-model cache key)."""

    libraries: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()
    digest: str = ""

    def register(self, options: Any) -> None:
        """Register every library on an `onnxruntime.SessionOptions`."""
        for library in self.libraries:
            options.register_custom_ops_library(library)

    def to_json(self) -> dict[str, Any]:
        return {"libraries": list(self.libraries), "domains": list(self.domains), "digest": self.digest}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CustomOps:
        return cls(tuple(data["libraries"]), tuple(data["domains"]), data["digest"])


NO_CUSTOM_OPS = CustomOps()


def load_custom_ops(libraries: Sequence[str], domains: Sequence[str], *, extensions: bool) -> CustomOps:
    """Check that each library exists and loads into ONNX Runtime (InvalidInput naming the first that
    does not), and add onnxruntime-extensions when `extensions` is on and the package is installed."""
    paths = [_check_library(library) for library in libraries]
    allowed = list(domains)
    extensions_library = _extensions_library() if extensions else None
    if extensions_library is not None:
        paths.append(extensions_library)
        allowed.append(EXTENSIONS_DOMAIN)
    ops = CustomOps(tuple(dict.fromkeys(paths)), tuple(dict.fromkeys(allowed)), _digest(paths))
    if ops.libraries:
        log.info("custom_ops_loaded", libraries=list(ops.libraries), domains=list(ops.domains))
    return ops


def _check_library(library: str) -> str:
    import onnxruntime as ort

    path = Path(library).resolve()
    if not path.is_file():
        raise InvalidInput(f"custom_op_libraries: {library!r} does not exist or is not a file")
    try:
        ort.SessionOptions().register_custom_ops_library(str(path))
    except Exception as exc:  # ORT raises its own types for dlopen and registration failures
        raise InvalidInput(
            logged(f"custom_op_libraries: {library!r} does not load into ONNX Runtime", exc)
        ) from None
    return str(path)


def _extensions_library() -> str | None:
    """The onnxruntime-extensions library: the package's native module, found without importing the
    package, whose import pulls torch in when installed (seconds, hundreds of MB) and sets
    PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python in os.environ."""
    spec = importlib.util.find_spec("onnxruntime_extensions")
    if spec is None:
        return None
    for folder in spec.submodule_search_locations or ():
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            candidate = Path(folder) / f"{_EXTENSIONS_MODULE}{suffix}"
            if candidate.is_file():
                return str(candidate)
    return _imported_extensions_library()


def _imported_extensions_library() -> str | None:
    """The library path from the package's own `get_library_path` (a layout we do not know).
    Its import changes os.environ (see above), which every subprocess started later would inherit
    (pure-Python protobuf: slower, other exception types), so the environment is put back."""
    before = dict(os.environ)
    try:
        import onnxruntime_extensions
    except ImportError:
        return None
    finally:
        _restore_environment(before)
    path: str = onnxruntime_extensions.get_library_path()
    return path


def _restore_environment(before: Mapping[str, str]) -> None:
    for name in os.environ.keys() - before.keys():
        del os.environ[name]
    for name, value in before.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


def _digest(paths: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.encode() + b"\0")
        with open(path, "rb") as file:
            while chunk := file.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


__all__ = ["EXTENSIONS_DOMAIN", "NO_CUSTOM_OPS", "CustomOps", "load_custom_ops"]
