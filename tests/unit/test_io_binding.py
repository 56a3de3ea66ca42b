"""BoundOrtSession's IO-binding run (what CUDA and TensorRT sessions use), exercised on CPU: the same
results as InferenceSession.run, wanted outputs only, counted; and a CPU session keeps the plain run."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from ortserve.runtime.session import BoundOrtSession, OrtSession, open_session
from tests import onnx_models

CPU = ["CPUExecutionProvider"]


@pytest.fixture
def linear(tmp_path: Path) -> ort.InferenceSession:
    path = tmp_path / "linear.onnx"
    onnx_models.linear(path, n_in=16, n_out=4, seed=3, bias=0.25)
    return ort.InferenceSession(str(path), providers=CPU)


def test_a_cpu_session_runs_without_io_binding(linear: ort.InferenceSession) -> None:
    session = open_session(linear)
    assert type(session) is OrtSession  # InferenceSession.run, nothing added
    session.run({"x": np.ones((2, 16), np.float32)})
    assert session.bound_runs == 0


def test_bound_runs_match_plain_runs_and_are_counted(linear: ort.InferenceSession) -> None:
    plain, bound = OrtSession(linear, ()), BoundOrtSession(linear, ())
    x = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    expected = plain.run({"x": x})
    got = bound.run({"x": x})
    assert len(got) == 1 and isinstance(got[0], np.ndarray)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(bound.run({"x": x}, ["y"])[0], expected[0])
    # A non-contiguous input (a column slice) is bound from a contiguous copy.
    wide = np.random.default_rng(1).standard_normal((5, 32)).astype(np.float32)
    np.testing.assert_array_equal(bound.run({"x": wide[:, ::2]})[0], plain.run({"x": wide[:, ::2]})[0])
    # A read-only input (zero-copy np.frombuffer over a request's bytes) is bound as it is.
    frozen = np.frombuffer(x.tobytes(), np.float32).reshape(x.shape)
    np.testing.assert_array_equal(bound.run({"x": frozen})[0], expected[0])
    assert bound.bound_runs == 4


def test_bound_runs_from_many_threads_are_all_counted(linear: ort.InferenceSession) -> None:
    bound = BoundOrtSession(linear, ())
    x = np.ones((1, 16), np.float32)
    expected = OrtSession(linear, ()).run({"x": x})[0]
    failures: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(25):
                np.testing.assert_array_equal(bound.run({"x": x})[0], expected)
        except BaseException as exc:  # collected: an assertion in a thread would be lost
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not failures and bound.bound_runs == 100
