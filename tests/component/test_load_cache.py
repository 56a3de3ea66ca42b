"""The optimized-model cache with real ONNX Runtime sessions: a second load comes from the cache, a
corrupt cached file is replaced, the key follows what shapes the graph, and the size cap evicts the
least recently used file."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ortserve.records import (
    BatchingSettings,
    ModelVersionRecord,
    ProviderSpec,
    SessionSettings,
    VersionState,
)
from ortserve.runtime.custom_ops import CustomOps
from ortserve.runtime.load_cache import LoadCache, Result, cache_key
from ortserve.runtime.session import SessionDefaults, create_session
from ortserve.signature import Signature
from ortserve.store import hash_file


def conv_model(path: Path) -> Path:
    """x[N,3,8,8] -> Conv 3x3 (8 channels) + bias -> Relu: ONNX Runtime fuses the pair on CPU."""
    rng = np.random.default_rng(3)
    weight = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b")
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 8, 8])],
        [weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def record(path: Path, session: SessionSettings | None = None) -> ModelVersionRecord:
    size, sha256 = hash_file(path)
    return ModelVersionRecord(
        model="conv",
        version=1,
        sha256=sha256,
        size_bytes=size,
        opset=17,
        producer="",
        signature=Signature((), (), True),
        providers=(),
        batching=BatchingSettings(),
        session=session or SessionSettings(),
        state=VersionState.READY,
        error="",
        description="",
        labels=MappingProxyType({}),
        created_by="",
        created_at=datetime.now(UTC),
        path=str(path),
    )


class Cache:
    """A LoadCache under `directory` with its results recorded."""

    def __init__(self, directory: Path, max_bytes: int = 0) -> None:
        self.results: list[Result] = []
        self.cache = LoadCache(directory, max_bytes, self.results.append)
        self.defaults = SessionDefaults(intra_op_threads=1, load_cache=self.cache)

    def files(self) -> list[Path]:
        return sorted(self.cache.directory.iterdir())


X = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)


def test_the_second_load_comes_from_the_cache_with_the_same_outputs(tmp_path: Path) -> None:
    model = conv_model(tmp_path / "conv.onnx")
    cache = Cache(tmp_path / "ort-cache")
    first = create_session(record(model), cache.defaults).run({"x": X})
    assert cache.results == ["miss"]
    [cached] = cache.files()  # no temp file left beside it
    assert cached.suffix == ".onnx"
    domains = {node.domain for node in onnx.load(cached).graph.node}
    assert any(d.startswith("com.microsoft") for d in domains), domains  # ORT's fused operators
    rec = record(model)
    model.unlink()  # only the cached file can serve the second load
    second = create_session(rec, cache.defaults).run({"x": X})
    assert cache.results == ["miss", "hit"]
    np.testing.assert_array_equal(second[0], first[0])


def test_a_corrupt_cached_file_is_deleted_and_rebuilt(tmp_path: Path) -> None:
    model = conv_model(tmp_path / "conv.onnx")
    cache = Cache(tmp_path / "ort-cache")
    first = create_session(record(model), cache.defaults).run({"x": X})
    [cached] = cache.files()
    cached.write_bytes(b"not an onnx model")
    again = create_session(record(model), cache.defaults).run({"x": X})
    assert cache.results == ["miss", "error"]
    assert cache.files() == [cached]
    onnx.checker.check_model(onnx.load(cached))  # the garbage was replaced by a whole model
    np.testing.assert_array_equal(again[0], first[0])
    create_session(record(model), cache.defaults)
    assert cache.results == ["miss", "error", "hit"]


def test_the_key_follows_what_shapes_the_optimized_graph() -> None:
    cpu = (ProviderSpec("CPUExecutionProvider"),)
    base = cache_key("a" * 64, SessionSettings(), cpu, CustomOps())
    assert base is not None and base.providers == ("CPUExecutionProvider",)
    others = [
        cache_key("b" * 64, SessionSettings(), cpu, CustomOps()),
        cache_key("a" * 64, SessionSettings(graph_optimization_level="extended"), cpu, CustomOps()),
        cache_key("a" * 64, SessionSettings(), (ProviderSpec("CUDAExecutionProvider"), *cpu), CustomOps()),
        cache_key("a" * 64, SessionSettings(), cpu, CustomOps(("/lib.so",), ("x.y",), "d" * 64)),
    ]
    digests = {base.digest, *(key.digest for key in others if key is not None)}
    assert len(digests) == 5
    assert cache_key("a" * 64, SessionSettings(graph_optimization_level="disable"), cpu, CustomOps()) is None
    tensorrt = (ProviderSpec("TensorrtExecutionProvider"), *cpu)  # compiles nodes: nothing to save
    assert cache_key("a" * 64, SessionSettings(), tensorrt, CustomOps()) is None


def test_least_recently_used_files_go_above_the_cap(tmp_path: Path) -> None:
    model = conv_model(tmp_path / "conv.onnx")
    probe = Cache(tmp_path / "probe")
    create_session(record(model), probe.defaults)
    size = probe.files()[0].stat().st_size
    cache = Cache(tmp_path / "ort-cache", max_bytes=int(size * 2.5))  # two files fit, three do not
    settings = [SessionSettings(inter_op_num_threads=n) for n in (1, 2, 3)]  # three keys, same graph
    a, b, c = (cache.cache.directory / f"{file_key(model, s)}.onnx" for s in settings)
    for s in settings[:2]:
        create_session(record(model, s), cache.defaults)
    now = time.time()
    os.utime(a, (now - 200, now - 200))  # a is older than b...
    os.utime(b, (now - 100, now - 100))
    create_session(record(model, settings[0]), cache.defaults)  # ...until a hit refreshes it
    create_session(record(model, settings[2]), cache.defaults)
    assert cache.results == ["miss", "miss", "hit", "miss"]
    assert cache.files() == sorted([a, c])  # b, the least recently used, went


def file_key(model: Path, settings: SessionSettings) -> str:
    key = cache_key(record(model).sha256, settings, (ProviderSpec("CPUExecutionProvider"),), CustomOps())
    assert key is not None
    return key.digest


def test_no_cache_where_nothing_is_optimized(tmp_path: Path) -> None:
    model = conv_model(tmp_path / "conv.onnx")
    cache = Cache(tmp_path / "ort-cache")
    create_session(record(model, SessionSettings(graph_optimization_level="disable")), cache.defaults)
    assert cache.results == [] and cache.files() == []
