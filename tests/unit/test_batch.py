import numpy as np
import pytest

from ortserve.scheduler.batch import shape_key, split, stack
from ortserve.scheduler.latency import LatencyModel


def test_stack_and_split_random_sizes_round_trip() -> None:
    rng = np.random.default_rng(1)
    sizes = rng.integers(1, 9, size=12)
    requests = [
        {"x": rng.standard_normal((n, 3)).astype(np.float32), "k": np.full((n, 1), i)}
        for i, n in enumerate(sizes)
    ]
    feeds, offsets = stack(requests)
    assert offsets == [0, *np.cumsum(sizes).tolist()]
    assert feeds["x"].shape == (sizes.sum(), 3)
    parts = split([feeds["x"] * 2, feeds["k"]], offsets, ["x2", "k"])
    for i, (request, (x2, k)) in enumerate(zip(requests, parts, strict=True)):
        np.testing.assert_array_equal(x2, request["x"] * 2)
        assert (k == i).all()


def test_stack_single_request_is_zero_copy() -> None:
    x = np.ones((2, 3), np.float32)
    feeds, offsets = stack([{"x": x}])
    assert feeds["x"] is x
    assert offsets == [0, 2]


def test_split_rejects_outputs_without_the_batch_rows() -> None:
    with pytest.raises(ValueError, match=r"output 'y' has shape \[1\], expected 5 rows on axis 0"):
        split([np.zeros(1)], [0, 2, 5], ["y"])


def test_shape_key_separates_non_batch_dims_dtypes_and_outputs() -> None:
    a = shape_key({"x": np.zeros((1, 3), np.float32)}, ["y"])
    assert a == shape_key({"x": np.zeros((7, 3), np.float32)}, ["y"])
    assert a != shape_key({"x": np.zeros((1, 4), np.float32)}, ["y"])
    assert a != shape_key({"x": np.zeros((1, 3), np.float64)}, ["y"])
    assert a != shape_key({"x": np.zeros((1, 3), np.float32)}, ["z"])


def test_latency_model_learns_interpolates_and_extrapolates() -> None:
    model = LatencyModel()
    assert model.estimate(4) is None
    for rows, ns in [(1, 100), (8, 800), (4, 400)]:
        model.observe(rows, ns)
    assert model.estimate(4) == 400
    assert model.estimate(6) == pytest.approx(600)
    assert model.estimate(16) == pytest.approx(1600)
    assert model.estimate(1) == 100
    model.observe(4, 600)
    assert model.estimate(4) == pytest.approx(440)
