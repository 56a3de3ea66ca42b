"""Shadow comparison: a candidate's answers against the served ones, never returned to callers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np


class ShadowObserver(Protocol):
    def compared(self, model: str, shadow_version: int, max_abs_diff: float, agreement: float) -> None: ...

    def failed(self, model: str, shadow_version: int) -> None: ...


class NullShadowObserver:
    def compared(self, model: str, shadow_version: int, max_abs_diff: float, agreement: float) -> None:
        pass

    def failed(self, model: str, shadow_version: int) -> None:
        pass


@dataclass(slots=True)
class ShadowStats:
    """Running comparison of one shadow version against whatever served the same requests."""

    shadow_version: int
    compared: int = 0
    errors: int = 0
    max_abs_diff: float = 0.0
    agree_rows: int = 0
    total_rows: int = 0

    @property
    def argmax_agreement(self) -> float:
        return self.agree_rows / self.total_rows if self.total_rows else 1.0

    def add(self, served: Mapping[str, np.ndarray], shadow: Mapping[str, np.ndarray]) -> None:
        diff, agree, rows = compare(served, shadow)
        self.compared += 1
        self.max_abs_diff = max(self.max_abs_diff, diff)
        self.agree_rows += agree
        self.total_rows += rows


def compare(served: Mapping[str, np.ndarray], shadow: Mapping[str, np.ndarray]) -> tuple[float, int, int]:
    """Max absolute difference over the outputs both have, and argmax agreement of the first one.

    Outputs whose shapes differ, and non-numeric outputs that differ, count as an infinite difference.
    """
    diff = 0.0
    for name, a in served.items():
        b = shadow.get(name)
        if b is None:
            continue
        diff = max(diff, _abs_diff(a, b))
    first = next(iter(served))
    agree, rows = _argmax(served[first], shadow.get(first))
    return diff, agree, rows


def _abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    if a.dtype.kind in "OUSb" or b.dtype.kind in "OUSb":
        return 0.0 if np.array_equal(a, b) else float("inf")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def _argmax(a: np.ndarray, b: np.ndarray | None) -> tuple[int, int]:
    if b is None or a.shape != b.shape or a.ndim == 0 or a.dtype.kind not in "fiu" or a.size == 0:
        return 0, 0
    flat_a = a.reshape(-1, a.shape[-1]) if a.ndim > 1 else a.reshape(1, -1)
    flat_b = b.reshape(flat_a.shape)
    agree = int(np.sum(np.argmax(flat_a, axis=-1) == np.argmax(flat_b, axis=-1)))
    return agree, flat_a.shape[0]
