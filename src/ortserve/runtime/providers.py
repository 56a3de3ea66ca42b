"""Execution providers are data: an ordered preference resolved against what ONNX Runtime offers."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from ortserve.errors import FailedPrecondition, InvalidInput
from ortserve.records import ProviderSpec

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
# Providers whose sessions get IO binding: inputs bound from host memory, outputs to host memory.
DEVICE_PROVIDERS = frozenset({CUDA, TENSORRT})

# Option keys ONNX Runtime documents for the providers whose options ortserve checks (CUDA and
# TensorRT: "Configuration Options" of onnxruntime.ai/docs/execution-providers; their option
# parsers, cuda_execution_provider_info.cc and tensorrt_execution_provider_info.cc). The CPU
# provider takes none from Python: its arena is the session's enable_cpu_mem_arena setting.
# Options that pass a memory address (a stream, an allocator, model bytes) are left out on purpose:
# an address from a registration or a config file would make the server read arbitrary memory.
# Other providers' options pass through unchecked.
KNOWN_OPTIONS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        CPU: frozenset(),
        CUDA: frozenset(
            {
                "device_id",
                "do_copy_in_default_stream",
                "use_ep_level_unified_stream",
                "gpu_mem_limit",
                "arena_extend_strategy",
                "cudnn_conv_algo_search",
                "cudnn_conv_use_max_workspace",
                "cudnn_conv1d_pad_to_nc1d",
                "enable_cuda_graph",
                "enable_skip_layer_norm_strict_mode",
                "prefer_nhwc",
                "use_tf32",
                "sdpa_kernel",
                "fuse_conv_bias",
                "tunable_op_enable",
                "tunable_op_tuning_enable",
                "tunable_op_max_tuning_duration_ms",
            }
        ),
        TENSORRT: frozenset(
            {
                "device_id",
                "trt_max_workspace_size",
                "trt_max_partition_iterations",
                "trt_min_subgraph_size",
                "trt_fp16_enable",
                "trt_bf16_enable",
                "trt_int8_enable",
                "trt_int8_calibration_table_name",
                "trt_int8_use_native_calibration_table",
                "trt_dla_enable",
                "trt_dla_core",
                "trt_dump_subgraphs",
                "trt_engine_cache_enable",
                "trt_engine_cache_path",
                "trt_engine_cache_prefix",
                "trt_weight_stripped_engine_enable",
                "trt_onnx_model_folder_path",
                "trt_engine_decryption_enable",
                "trt_engine_decryption_lib_path",
                "trt_force_sequential_engine_build",
                "trt_context_memory_sharing_enable",
                "trt_layer_norm_fp32_fallback",
                "trt_timing_cache_enable",
                "trt_timing_cache_path",
                "trt_force_timing_cache",
                "trt_detailed_build_log",
                "trt_build_heuristics_enable",
                "trt_sparsity_enable",
                "trt_builder_optimization_level",
                "trt_auxiliary_streams",
                "trt_tactic_sources",
                "trt_extra_plugin_lib_paths",
                "trt_profile_min_shapes",
                "trt_profile_max_shapes",
                "trt_profile_opt_shapes",
                "trt_cuda_graph_enable",
                "trt_dump_ep_context_model",
                "trt_ep_context_file_path",
                "trt_ep_context_embed_mode",
                "trt_engine_hw_compatible",
                "trt_op_types_to_exclude",
                "trt_preview_features",
            }
        ),
    }
)


ADDRESS_OPTIONS = frozenset(
    {
        "has_user_compute_stream",
        "user_compute_stream",
        "gpu_external_alloc",
        "gpu_external_free",
        "gpu_external_empty_cache",
        "trt_onnx_bytestream",
        "trt_external_data_bytestream",
    }
)


def check_specs(specs: Sequence[ProviderSpec], known: Collection[str], what: str) -> None:
    """Refuse a provider ONNX Runtime does not know (not in `known`, its get_all_providers()) and an
    option key the provider does not document, naming them and `what` was being set."""
    for spec in specs:
        if spec.name not in known:
            raise InvalidInput(
                f"{what}: unknown execution provider {spec.name!r}; known: {', '.join(sorted(known))}"
            )
        pointers = sorted(set(spec.options) & ADDRESS_OPTIONS)
        if pointers:
            raise InvalidInput(
                f"{what}: option {pointers[0]!r} for {spec.name} passes a memory address; "
                "ortserve does not set it"
            )
        keys = KNOWN_OPTIONS.get(spec.name)
        unknown = sorted(set(spec.options) - keys) if keys is not None else []
        if unknown:
            documented = ", ".join(sorted(keys or ())) or "none"
            raise InvalidInput(
                f"{what}: unknown option {unknown[0]!r} for {spec.name}; documented options: {documented}"
            )
        for key, value in spec.options.items():
            if not isinstance(value, str):
                raise InvalidInput(f"{what}: option {key!r} of {spec.name} must be a string")


def with_cache_paths(spec: ProviderSpec, directory: Path) -> ProviderSpec:
    """TensorRT with its engine (or timing) cache enabled but no path: the cache goes to `directory`
    (under the data directory, per version), so engines survive restarts and stay apart."""
    if spec.name != TENSORRT:
        return spec
    options = dict(spec.options)
    for enable, path in (
        ("trt_engine_cache_enable", "trt_engine_cache_path"),
        ("trt_timing_cache_enable", "trt_timing_cache_path"),
    ):
        if _on(options.get(enable, "0")) and not options.get(path):
            options[path] = str(directory)
    if options == dict(spec.options):
        return spec
    return ProviderSpec(spec.name, MappingProxyType(options))


def _on(flag: str) -> bool:
    return flag.strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True, slots=True)
class ProviderPlan:
    """What to ask ONNX Runtime for, and what was asked for but is not available here."""

    providers: tuple[ProviderSpec, ...]
    unavailable: tuple[str, ...]


def resolve_providers(
    preferred: Sequence[ProviderSpec], available: Sequence[str], *, strict: bool
) -> ProviderPlan:
    """Keep the preferred providers ONNX Runtime has, in order, always ending with CPU.

    With `strict`, a preferred provider that is not available is an error naming it.
    """
    chosen = [p for p in preferred if p.name in available]
    missing = tuple(p.name for p in preferred if p.name not in available)
    if strict and missing:
        raise FailedPrecondition(
            f"execution provider(s) {', '.join(missing)} not available; available: {', '.join(available)}"
        )
    if not any(p.name == CPU for p in chosen):
        chosen.append(ProviderSpec(CPU))
    return ProviderPlan(tuple(chosen), missing)


def check_fallback(plan: ProviderPlan, active: Sequence[str], *, strict: bool) -> tuple[str, ...]:
    """Providers that were requested and offered but did not make it into the session.

    onnxruntime-gpu silently falls back to CPU when CUDA cannot start; `strict` turns that
    into an error instead of a recorded fallback.
    """
    lost = tuple(p.name for p in plan.providers if p.name not in active)
    if strict and lost:
        raise FailedPrecondition(
            f"execution provider(s) {', '.join(lost)} failed to start; "
            f"the session runs on {', '.join(active)}"
        )
    return lost
