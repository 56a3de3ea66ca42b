"""Provider specs: the one text syntax (CLI, SDK, config) and the checks against ONNX Runtime's names
and the documented option keys of CPU, CUDA and TensorRT."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

import onnxruntime as ort
import pytest

from ortserve import cli
from ortserve.config import load_config
from ortserve.errors import InvalidInput
from ortserve.provider_specs import format_spec, parse_spec, parse_spec_list, to_spec, to_specs
from ortserve.records import ProviderSpec
from ortserve.runtime.providers import KNOWN_OPTIONS, check_specs, with_cache_paths

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
KNOWN = ort.get_all_providers()


def spec(name: str, **options: str) -> ProviderSpec:
    return ProviderSpec(name, MappingProxyType(options))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("CUDAExecutionProvider", spec(CUDA)),
        ("cuda", spec(CUDA)),
        (" TensorRT ", spec(TRT)),
        ("trt:trt_fp16_enable=1", spec(TRT, trt_fp16_enable="1")),
        (
            "CUDAExecutionProvider:device_id=0,gpu_mem_limit=2147483648",
            spec(CUDA, device_id="0", gpu_mem_limit="2147483648"),
        ),
        ("cpu:", spec(CPU)),
        # TensorRT's shape lists hold commas: a piece with ':' and no '=' continues the value.
        (
            "tensorrt:trt_profile_min_shapes=x:1x3,y:1x3,trt_fp16_enable=1",
            spec(TRT, trt_profile_min_shapes="x:1x3,y:1x3", trt_fp16_enable="1"),
        ),
        ("openvino", spec("OpenVINOExecutionProvider")),
        ("rocm", spec("ROCMExecutionProvider")),
        ("dml", spec("DmlExecutionProvider")),
        ("coreml", spec("CoreMLExecutionProvider")),
    ],
)
def test_a_spec_parses_and_formats_back(text: str, expected: ProviderSpec) -> None:
    parsed = parse_spec(text)
    assert parsed == expected
    assert parse_spec(format_spec(parsed)) == parsed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "has no provider name"),
        (":device_id=0", "has no provider name"),
        ("cuda:device_id", "option 'device_id' is not key=value"),
        ("cuda:device_id=0,cpu", "option 'cpu' is not key=value (separate providers with ';')"),
        ("cuda:=3", "option '=3' is not key=value"),
        ("cuda:device_id=0,device_id=1", "sets option 'device_id' twice"),
        ("cuda;cpu", "holds several providers (';' separates specs in a list)"),
    ],
)
def test_a_malformed_spec_names_the_text_and_the_cause(text: str, message: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_spec(text)
    assert message in str(refused.value) and repr(text) in str(refused.value)


def test_lists_are_semicolon_separated_and_plain_names_may_use_commas() -> None:
    assert parse_spec_list("cuda:device_id=1,gpu_mem_limit=1024;cpu") == (
        spec(CUDA, device_id="1", gpu_mem_limit="1024"),
        spec(CPU),
    )
    assert parse_spec_list("CUDAExecutionProvider, CPUExecutionProvider") == (spec(CUDA), spec(CPU))
    assert parse_spec_list(" ; cuda ;") == (spec(CUDA),)


def test_the_sdk_accepts_strings_specs_and_pairs() -> None:
    assert to_specs(["cuda:device_id=0", spec("cpu"), ("tensorrt", {"trt_fp16_enable": True})]) == (
        spec(CUDA, device_id="0"),
        spec(CPU),
        spec(TRT, trt_fp16_enable="1"),
    )
    assert to_spec((CUDA, {"device_id": 1})) == spec(CUDA, device_id="1")
    with pytest.raises(InvalidInput, match="options must be a mapping"):
        to_spec(("cuda", "device_id=0"))  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="expected 'NAME"):
        to_spec(42)  # type: ignore[arg-type]


def test_the_server_setting_reads_toml_lists_environment_and_flags(tmp_path: Path) -> None:
    toml = tmp_path / "ortserve.toml"
    toml.write_text('providers = ["cuda:device_id=0,gpu_mem_limit=2147483648", "cpu"]\n')
    from_file = load_config(str(toml), environ={})
    assert from_file.providers == ("CUDAExecutionProvider:device_id=0,gpu_mem_limit=2147483648", CPU)
    assert from_file.provider_specs == (spec(CUDA, device_id="0", gpu_mem_limit="2147483648"), spec(CPU))
    from_env = load_config(environ={"ORTSERVE_PROVIDERS": "trt:trt_fp16_enable=1;cuda;cpu"})
    assert from_env.provider_specs == (spec(TRT, trt_fp16_enable="1"), spec(CUDA), spec(CPU))
    from_flag = load_config(environ={}, overrides={"providers": "cuda:device_id=1;cpu"})
    assert from_flag.provider_specs == (spec(CUDA, device_id="1"), spec(CPU))


def test_serve_providers_flag_overrides_the_environment() -> None:
    args = cli._parser().parse_args(["serve", "--providers", "cuda:device_id=1;cpu"])
    config = load_config(environ={"ORTSERVE_PROVIDERS": "cpu"}, overrides=cli._overrides(args))
    assert config.provider_specs == (spec(CUDA, device_id="1"), spec(CPU))


def test_a_malformed_server_setting_names_where_it_came_from() -> None:
    with pytest.raises(InvalidInput) as refused:
        load_config(environ={"ORTSERVE_PROVIDERS": "cuda:device_id=0,cpu"})
    assert str(refused.value).startswith("ORTSERVE_PROVIDERS: provider spec 'cuda:device_id=0,cpu'")


def test_known_providers_and_documented_options_pass() -> None:
    check_specs(
        [spec(TRT, trt_fp16_enable="1", trt_engine_cache_enable="1"), spec(CUDA, device_id="0"), spec(CPU)],
        KNOWN,
        "test",
    )
    check_specs([spec("OpenVINOExecutionProvider", device_type="CPU")], KNOWN, "test")  # not checked


def test_an_unknown_provider_is_named_with_the_known_ones() -> None:
    with pytest.raises(InvalidInput) as refused:
        check_specs([spec("CUDAExecutionProvder")], KNOWN, "model 'm' providers")
    message = str(refused.value)
    assert message.startswith("model 'm' providers: unknown execution provider 'CUDAExecutionProvder'")
    assert CUDA in message and CPU in message


@pytest.mark.parametrize(
    ("provider", "key"), [(CUDA, "gpu_memory_limit"), (TRT, "trt_fp16"), (CPU, "use_arena")]
)
def test_an_unknown_option_key_is_named_with_its_provider(provider: str, key: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        check_specs([spec(provider, **{key: "1"})], KNOWN, "server setting providers")
    assert f"unknown option {key!r} for {provider}" in str(refused.value)
    if KNOWN_OPTIONS[provider]:
        assert "device_id" in str(refused.value)  # the documented keys are listed
    else:
        assert "documented options: none" in str(refused.value)


@pytest.mark.parametrize(
    ("provider", "key"),
    [(CUDA, "user_compute_stream"), (CUDA, "gpu_external_alloc"), (TRT, "trt_onnx_bytestream")],
)
def test_options_that_pass_a_memory_address_are_refused(provider: str, key: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        check_specs([spec(provider, **{key: "140737488355328"})], KNOWN, "model 'm' providers")
    assert f"option {key!r} for {provider} passes a memory address" in str(refused.value)


def test_tensorrt_caches_without_a_path_go_to_the_given_directory(tmp_path: Path) -> None:
    both = spec(TRT, trt_engine_cache_enable="1", trt_timing_cache_enable="True")
    placed = with_cache_paths(both, tmp_path)
    assert placed.options["trt_engine_cache_path"] == str(tmp_path)
    assert placed.options["trt_timing_cache_path"] == str(tmp_path)
    own = spec(TRT, trt_engine_cache_enable="1", trt_engine_cache_path="/elsewhere")
    assert with_cache_paths(own, tmp_path) is own
    off = spec(TRT, trt_engine_cache_enable="0")
    assert with_cache_paths(off, tmp_path) is off
    cuda = spec(CUDA, device_id="0")
    assert with_cache_paths(cuda, tmp_path) is cuda
