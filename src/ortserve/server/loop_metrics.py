"""Counters, gauges and histograms updated per request on the event loop, without locks.

prometheus_client takes a lock per value and walks the buckets in Python on every observation;
at several observations per request that was a tenth of a tiny model's server time. These
families keep plain numbers instead and are read by a collector when Prometheus scrapes.
Only the event-loop thread may update them (the scrape thread only reads); values updated from
the batcher's execution threads stay on prometheus_client's thread-safe types.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString


class Value:
    """One counter or gauge child."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount


class Buckets:
    """One histogram child: a count per bucket (the last one is +Inf) and the sum."""

    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self._bounds, amount)] += 1
        self.sum += amount


class _Family:
    _children: dict[tuple[str, ...], Any]

    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.label_names = list(labels)

    def forget(self, *prefix: str) -> None:
        """Drop every child whose first label values are `prefix` (a retired version's series)."""
        size = len(prefix)
        for values in [v for v in self._children if v[:size] == prefix]:
            del self._children[values]


class LoopCounter(_Family):
    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        super().__init__(name, documentation, labels)
        self._children: dict[tuple[str, ...], Value] = {}

    def labels(self, *values: str) -> Value:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = Value()
        return child

    def collect(self) -> Metric:
        # CounterMetricFamily appends "_total" itself.
        family = CounterMetricFamily(
            self.name.removesuffix("_total"), self.documentation, labels=self.label_names
        )
        for values, child in list(self._children.items()):
            family.add_metric(list(values), child.value)
        return family


class LoopGauge(LoopCounter):
    def collect(self) -> Metric:
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.label_names)
        for values, child in list(self._children.items()):
            family.add_metric(list(values), child.value)
        return family


class LoopHistogram(_Family):
    def __init__(
        self, name: str, documentation: str, labels: Sequence[str], buckets: Sequence[float]
    ) -> None:
        super().__init__(name, documentation, labels)
        self._bounds = tuple(float(b) for b in buckets)
        self._children: dict[tuple[str, ...], Buckets] = {}

    def labels(self, *values: str) -> Buckets:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = Buckets(self._bounds)
        return child

    def collect(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.label_names)
        names = [*map(floatToGoString, self._bounds), "+Inf"]
        for values, child in list(self._children.items()):
            counts, total = list(child.counts), child.sum
            cumulative, buckets = 0, []
            for name, count in zip(names, counts, strict=True):
                cumulative += count
                buckets.append((name, float(cumulative)))
            family.add_metric(list(values), buckets, total)
        return family


F = TypeVar("F", bound="LoopCounter | LoopHistogram")


class LoopCollector:
    """Registers loop-updated families with a prometheus_client registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._families: list[LoopCounter | LoopHistogram] = []
        registry.register(self)

    def counter(self, name: str, documentation: str, labels: Sequence[str]) -> LoopCounter:
        return self._add(LoopCounter(name, documentation, labels))

    def gauge(self, name: str, documentation: str, labels: Sequence[str]) -> LoopGauge:
        return self._add(LoopGauge(name, documentation, labels))

    def histogram(
        self, name: str, documentation: str, labels: Sequence[str], buckets: Sequence[float]
    ) -> LoopHistogram:
        return self._add(LoopHistogram(name, documentation, labels, buckets))

    def _add(self, family: F) -> F:
        self._families.append(family)
        return family

    def collect(self) -> Iterator[Metric]:
        for family in self._families:
            yield family.collect()
