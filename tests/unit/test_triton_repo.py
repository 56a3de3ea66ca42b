"""Reading Triton repositories (triton_repo) and planning their import (triton_import), files only."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format

from ortserve.api.inference import model_config_pb2
from ortserve.client import Batching
from ortserve.errors import InvalidInput
from ortserve.triton_import import Dropped, plan_repository
from ortserve.triton_repo import TritonModelError, read_config, select_versions, strip_unknown_fields
from tests import triton_repos

DESCRIPTOR = model_config_pb2.ModelConfig.DESCRIPTOR

WITH_UNKNOWN = """# a comment with { braces
name: "m"  # and one after a field
ensemble_scheduling { step [ { model_name: "a" input_map { key: "x" value: "y" } }, { model_name: "b" } ] }
instance_group [ { count: 2 rate_limiter { resources [ { name: "r" count: 1 } ] priority: 2 }
  kind: KIND_CPU } ]
parameters { key: "note" value: { string_value: "a } tricky # string" "continued" } }
sequence_batching: < max_sequence_idle_microseconds: 5 >;
max_batch_size: 8
"""


def test_unknown_fields_are_named_and_blanked_so_the_rest_parses_strictly() -> None:
    known, unknown = strip_unknown_fields(WITH_UNKNOWN, DESCRIPTOR)
    assert unknown == ("ensemble_scheduling", "instance_group.rate_limiter", "sequence_batching")
    assert known.count("\n") == WITH_UNKNOWN.count("\n")  # lines kept: errors point at the file
    config = text_format.Parse(known, model_config_pb2.ModelConfig())
    assert (config.name, config.max_batch_size) == ("m", 8)
    assert [(g.count, g.kind) for g in config.instance_group] == [
        (2, model_config_pb2.ModelInstanceGroup.KIND_CPU)
    ]
    assert config.parameters["note"].string_value == "a } tricky # stringcontinued"


@pytest.mark.parametrize(
    "text", ["instance_group [ { count: 2 ", 'name: "unterminated', "max_batch_size: 8 }", "a: $"]
)
def test_text_the_scanner_cannot_follow_is_left_to_the_parser(text: str) -> None:
    assert strip_unknown_fields(text, DESCRIPTOR) == (text, ())


def test_an_unreadable_config_names_the_file_and_the_line(tmp_path: Path) -> None:
    path = tmp_path / "config.pbtxt"
    path.write_text('name: "m"\nsequence_batching { }\nmax_batch_size: eight\n')
    with pytest.raises(TritonModelError) as info:
        read_config(path)
    assert info.value.path == path
    assert info.value.reason.startswith("is not a valid Triton model configuration: 3:17 :")
    assert str(info.value).startswith("config.pbtxt is not a valid Triton model configuration")


def _policy(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


@pytest.mark.parametrize(
    ("text", "selected", "named"),
    [
        ("", [4], "latest 1 (Triton's default)"),
        ("version_policy { latest { num_versions: 2 } }", [3, 4], "latest 2"),
        ("version_policy { all { } }", [1, 3, 4], "all"),
        ("version_policy { specific { versions: [ 4, 1, 9 ] } }", [1, 4], "specific [1, 4, 9]"),
    ],
)
def test_version_policy_selects_like_triton(text: str, selected: list[int], named: str) -> None:
    assert select_versions(_policy(text), [1, 3, 4]) == (selected, named)


def test_a_latest_policy_of_zero_versions_is_refused() -> None:
    with pytest.raises(InvalidInput, match="num_versions must be >= 1, got 0"):
        select_versions(_policy("version_policy { latest { num_versions: 0 } }"), [1])


def test_plan_of_a_repository(tmp_path: Path) -> None:
    repo = triton_repos.write_repository(tmp_path / "repo")
    plans = {p.name: p for p in plan_repository(repo)}
    assert {name: p.status for name, p in plans.items()} == {
        "README.md": "skipped",
        "broken": "error",
        "dyn": "import",
        "ens": "skipped",
        "latest": "import",
        "ov": "import",
        "plain": "import",
        "py": "skipped",
        "specific": "import",
        "trt": "import",
    }
    actions = {name: [(v.triton_version, v.action) for v in p.versions] for name, p in plans.items()}
    assert actions["dyn"] == [(1, "register"), (2, "register")]
    assert actions["latest"] == [(1, "excluded"), (2, "excluded"), (3, "register")]
    assert actions["specific"] == [(1, "register"), (2, "excluded"), (3, "register")]
    assert plans["dyn"].batching == Batching(8, 500, (4, 8), 64)
    assert plans["latest"].batching == Batching(max_batch_size=4)
    assert plans["plain"].batching is None
    assert plans["specific"].batching == Batching(max_batch_size=0)  # Triton's 0: no batch axis
    assert plans["trt"].providers == (
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    )
    assert plans["ov"].providers == ("OpenVINOExecutionProvider", "CPUExecutionProvider")
    assert plans["dyn"].providers == ("CPUExecutionProvider",)
    assert plans["plain"].providers == ()
    assert plans["broken"].reason.startswith(
        f"{repo / 'broken' / 'config.pbtxt'} is not a valid Triton model configuration: 1:17"
    )
    assert plans["ens"].reason.startswith("an ensemble")
    assert plans["py"].reason.startswith("a Python backend model")
    assert plans["latest"].versions[0].detail == "not selected by version_policy latest 1"


def test_what_is_not_carried_over_is_listed_per_model(tmp_path: Path) -> None:
    plans = {p.name: p for p in plan_repository(triton_repos.write_repository(tmp_path / "repo"))}
    what = {name: [d.what for d in p.dropped] for name, p in plans.items()}
    assert what["dyn"] == ["instance_group[0].count = 2"]
    assert what["latest"] == ["model_warmup (1 sample(s))"]
    assert what["specific"] == ["version_policy version 5"]
    assert what["ov"] == ["instance_group.rate_limiter"]
    assert what["plain"] == ["plain/labels.txt"]
    assert what["trt"] == [
        "instance_group[0].gpus = [0]",
        "optimization.execution_accelerators.gpu_execution_accelerator[tensorrt].parameters "
        "{precision_mode: FP16}",
        "response_cache",
        "sequence_batching",
    ]
    assert Dropped("sequence_batching", "stateful sequence batching is not supported") in plans["trt"].dropped


def test_accelerators_follow_the_instance_kind(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    configs = {
        "auto": 'optimization { execution_accelerators { gpu_execution_accelerator [ { name: "cuda" } ] } }',
        "cpuonly": "instance_group [ { kind: KIND_CPU } ]\n"
        'optimization { execution_accelerators { gpu_execution_accelerator [ { name: "tensorrt" } ] } }',
        "odd": "instance_group [ { kind: KIND_GPU } ]\n"
        'optimization { execution_accelerators { gpu_execution_accelerator [ { name: "fancy" } ] } }',
    }
    for name, text in configs.items():
        triton_repos.version(repo, name, 1, seed=1)
        (repo / name / "config.pbtxt").write_text(text)
    plans = {p.name: p for p in plan_repository(repo)}
    assert plans["auto"].providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert plans["cpuonly"].providers == ("CPUExecutionProvider",)
    assert [d.what for d in plans["cpuonly"].dropped] == ["gpu_execution_accelerator"]
    assert plans["odd"].providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert plans["odd"].dropped == [
        Dropped(
            "gpu_execution_accelerator 'fancy'",
            "not an ONNX Runtime accelerator ortserve knows (tensorrt, cuda)",
        )
    ]
