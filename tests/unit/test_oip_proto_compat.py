"""Our `inference` protos against tritonclient's own: every field we define must match Triton's wire shape.

tritonclient 2.73 needs protobuf<7 and defines the same `inference.*` symbols, so its descriptors
are dumped as JSON by a subprocess in `.venv-triton` (scripts/triton_venv.sh creates it).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from google.protobuf.descriptor import Descriptor, FileDescriptor

from ortserve.api.inference import grpc_service_pb2, model_config_pb2
from tests.triton import triton_python

DUMP = r"""
import json
from tritonclient.grpc import model_config_pb2, service_pb2

def kind(f):
    if f.message_type:
        return f.message_type.full_name
    return f.enum_type.full_name if f.enum_type else ""

def walk(desc, out, enums):
    out[desc.full_name] = {
        f.name: [f.number, f.type, f.label == f.LABEL_REPEATED, kind(f)] for f in desc.fields
    }
    for e in desc.enum_types:
        enums[e.full_name] = {v.name: v.number for v in e.values}
    for nested in desc.nested_types:
        walk(nested, out, enums)

out, enums = {}, {}
for module in (service_pb2, model_config_pb2):
    for e in module.DESCRIPTOR.enum_types_by_name.values():
        enums[e.full_name] = {v.name: v.number for v in e.values}
    for desc in module.DESCRIPTOR.message_types_by_name.values():
        walk(desc, out, enums)
services = {
    s.full_name: {m.name: [m.input_type.full_name, m.output_type.full_name,
                           m.client_streaming, m.server_streaming] for m in s.methods}
    for s in service_pb2.DESCRIPTOR.services_by_name.values()
}
print(json.dumps({"messages": out, "enums": enums, "services": services}))
"""


@pytest.fixture(scope="module")
def triton() -> dict[str, Any]:
    done = subprocess.run(
        [str(triton_python()), "-c", DUMP], check=True, capture_output=True, text=True, timeout=120
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


Tables = tuple[dict[str, dict[str, list[Any]]], dict[str, dict[str, int]]]


def _walk(desc: Descriptor, out: dict[str, dict[str, list[Any]]], enums: dict[str, dict[str, int]]) -> None:
    out[desc.full_name] = {
        f.name: [
            f.number,
            f.type,
            f.is_repeated,
            f.message_type.full_name if f.message_type else (f.enum_type.full_name if f.enum_type else ""),
        ]
        for f in desc.fields
    }
    for enum in desc.enum_types:
        enums[enum.full_name] = {v.name: v.number for v in enum.values}
    for nested in desc.nested_types:
        _walk(nested, out, enums)


def tables() -> Tables:
    out: dict[str, dict[str, list[Any]]] = {}
    enums: dict[str, dict[str, int]] = {}
    files: list[FileDescriptor] = [grpc_service_pb2.DESCRIPTOR, model_config_pb2.DESCRIPTOR]
    for file in files:
        for enum in file.enum_types_by_name.values():
            enums[enum.full_name] = {v.name: v.number for v in enum.values}
        for desc in file.message_types_by_name.values():
            _walk(desc, out, enums)
    return out, enums


def ours() -> dict[str, dict[str, list[Any]]]:
    return tables()[0]


def test_tritonclient_is_the_pinned_version() -> None:
    done = subprocess.run(
        [str(triton_python()), "-c", "import importlib.metadata as m; print(m.version('tritonclient'))"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip() == "2.73.0"


def test_every_message_we_define_exists_in_triton(triton: dict[str, Any]) -> None:
    missing = sorted(set(ours()) - set(triton["messages"]))
    assert not missing, f"messages Triton does not have: {missing}"


def test_every_field_we_define_matches_triton(triton: dict[str, Any]) -> None:
    theirs = triton["messages"]
    mismatches = []
    for message, fields in ours().items():
        for name, shape in fields.items():
            other = theirs.get(message, {}).get(name)
            if other != shape:
                mismatches.append(f"{message}.{name}: ours {shape}, Triton's {other}")
    assert not mismatches, "\n".join(mismatches)


def test_our_tables_are_not_empty() -> None:
    messages, enums = tables()
    assert messages["inference.ModelInferRequest"]["raw_input_contents"] == [7, 12, True, ""]
    assert enums["inference.DataType"]["TYPE_STRING"] == 13


def test_every_enum_value_we_define_matches_triton(triton: dict[str, Any]) -> None:
    theirs = triton["enums"]
    mismatches = [
        f"{enum}.{name}: ours {number}, Triton's {theirs.get(enum, {}).get(name)}"
        for enum, values in tables()[1].items()
        for name, number in values.items()
        if theirs.get(enum, {}).get(name) != number
    ]
    assert not mismatches, "\n".join(mismatches)


def test_every_rpc_we_serve_matches_triton(triton: dict[str, Any]) -> None:
    service = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = triton["services"]["inference.GRPCInferenceService"]
    for method in service.methods:
        shape = [
            method.input_type.full_name,
            method.output_type.full_name,
            method.client_streaming,
            method.server_streaming,
        ]
        assert theirs.get(method.name) == shape, method.name


def test_the_dump_runs_outside_our_process() -> None:
    """A guard: importing tritonclient here would clash with our `inference.*` symbols."""
    assert "tritonclient" not in sys.modules
