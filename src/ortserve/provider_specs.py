"""The text form of execution provider preferences, one syntax for the CLI, the SDK and the config.

A spec is `NAME` or `NAME:key=value,key=value`, e.g.
`CUDAExecutionProvider:device_id=0,gpu_mem_limit=2147483648`. NAME is ONNX Runtime's provider name
or one of the short names in SHORT_NAMES (any case). Values are strings, passed to ONNX Runtime as
given. A piece without `=` but with `:` continues the previous value (TensorRT's shape lists:
`trt_profile_min_shapes=x:1x3,y:1x3`). A list of specs (environment variable, server flag) separates
them with `;`; a list of plain names may also use `,` (`cuda,cpu`).

Only the syntax is checked here; runtime/providers.py checks names and option keys against ONNX
Runtime. This module imports no ONNX Runtime, so the SDK can use it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from ortserve.errors import InvalidInput
from ortserve.records import ProviderSpec

SHORT_NAMES: Mapping[str, str] = MappingProxyType(
    {
        "cpu": "CPUExecutionProvider",
        "cuda": "CUDAExecutionProvider",
        "tensorrt": "TensorrtExecutionProvider",
        "trt": "TensorrtExecutionProvider",
        "rocm": "ROCMExecutionProvider",
        "migraphx": "MIGraphXExecutionProvider",
        "openvino": "OpenVINOExecutionProvider",
        "dml": "DmlExecutionProvider",
        "coreml": "CoreMLExecutionProvider",
    }
)

# What the SDK accepts for one provider: a spec string, a ProviderSpec or a (name, options) pair.
ProviderLike = str | ProviderSpec | tuple[str, Mapping[str, object]]


def full_name(name: str) -> str:
    """ONNX Runtime's name for `name`: a short name resolved, anything else as given."""
    return SHORT_NAMES.get(name.strip().lower(), name.strip())


def parse_spec(text: str) -> ProviderSpec:
    """One spec, `NAME[:key=value,...]`; errors name the text and what was expected."""
    if ";" in text:
        raise InvalidInput(
            f"provider spec {text!r} holds several providers (';' separates specs in a list); "
            "give each provider as its own spec"
        )
    name, _, rest = text.strip().partition(":")
    if not name.strip():
        raise InvalidInput(f"provider spec {text!r} has no provider name (expected NAME[:key=value,...])")
    options: dict[str, str] = {}
    last = ""
    for piece in rest.split(",") if rest.strip() else ():
        key, equals, value = piece.partition("=")
        if equals and key.strip():
            last = key.strip()
            if last in options:
                raise InvalidInput(f"provider spec {text!r} sets option {last!r} twice")
            options[last] = value.strip()
        elif not equals and last and ":" in piece:
            options[last] += "," + piece.strip()
        else:
            raise InvalidInput(
                f"provider spec {text!r}: option {piece.strip()!r} is not key=value "
                "(separate providers with ';')"
            )
    return ProviderSpec(full_name(name), MappingProxyType(options))


def parse_spec_list(text: str) -> tuple[ProviderSpec, ...]:
    """Specs separated by `;` (or plain names separated by `,`), in order of preference."""
    parts = text.split(";") if ";" in text or ":" in text else text.split(",")
    return tuple(parse_spec(part) for part in parts if part.strip())


def format_spec(spec: ProviderSpec) -> str:
    """The text form `parse_spec` reads back."""
    if not spec.options:
        return spec.name
    return spec.name + ":" + ",".join(f"{k}={v}" for k, v in spec.options.items())


def to_spec(item: ProviderLike) -> ProviderSpec:
    """A ProviderSpec from what a caller passed: a spec string, a ProviderSpec or (name, options)."""
    if isinstance(item, ProviderSpec):
        return ProviderSpec(full_name(item.name), MappingProxyType(dict(item.options)))
    if isinstance(item, str):
        return parse_spec(item)
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
        name, options = item
        if not isinstance(options, Mapping):
            raise InvalidInput(f"provider {name!r}: options must be a mapping, got {type(options).__name__}")
        return ProviderSpec(full_name(name), MappingProxyType({str(k): _text(v) for k, v in options.items()}))
    raise InvalidInput(
        f"provider {item!r}: expected 'NAME[:key=value,...]', a ProviderSpec or a (name, options) pair"
    )


def to_specs(items: Iterable[ProviderLike]) -> tuple[ProviderSpec, ...]:
    return tuple(to_spec(item) for item in items)


def _text(value: object) -> str:
    """Option values are strings; booleans become 1/0 as ONNX Runtime's flags expect."""
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)
