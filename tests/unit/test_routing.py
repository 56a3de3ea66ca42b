from types import MappingProxyType

import numpy as np
import pytest

from ortserve.errors import InvalidInput, NotFound
from ortserve.records import TrafficEntry, TrafficPolicy
from ortserve.scheduler.routing import ModelRoutes, choose, parse_weights
from ortserve.scheduler.shadow import ShadowStats, compare

KEYS = [f"user-{i}" for i in range(4000)]


def routes(
    weights: dict[str, int], sticky: bool = True, aliases: dict[str, int] | None = None
) -> ModelRoutes:
    entries = tuple(TrafficEntry(t, w) for t, w in weights.items())
    return ModelRoutes(
        MappingProxyType(aliases or {}), TrafficPolicy(model="m", entries=entries, sticky=sticky)
    )


def pick(r: ModelRoutes, key: str, ready: frozenset[int] = frozenset({1, 2, 3})) -> int | None:
    latest = max(ready) if ready else None
    return choose("m", "", r, ready=lambda v: v in ready, latest_ready=lambda: latest, routing_key=key)


def test_selectors_pin_follow_aliases_and_fall_back() -> None:
    r = ModelRoutes(MappingProxyType({"production": 2, "canary": 3}))
    assert choose("m", "1", r, ready=lambda v: True, latest_ready=lambda: 3) == 1
    assert choose("m", "canary", r, ready=lambda v: True, latest_ready=lambda: 3) == 3
    assert choose("m", "", r, ready=lambda v: True, latest_ready=lambda: 3) == 2
    assert (
        choose("m", "", r, ready=lambda v: v != 2, latest_ready=lambda: 3) == 3
    )  # production not ready here: latest ready
    assert choose("m", "", ModelRoutes(), ready=lambda v: True, latest_ready=lambda: 7) == 7
    with pytest.raises(NotFound, match="model 'm' has no version or alias 'staging'"):
        choose("m", "staging", r, ready=lambda v: True, latest_ready=lambda: 3)


def test_sticky_keys_stay_while_weights_are_unchanged() -> None:
    r = routes({"1": 90, "2": 10})
    first = [pick(r, k) for k in KEYS]
    assert first == [pick(r, k) for k in KEYS]
    share = first.count(2) / len(KEYS)
    assert 0.07 < share < 0.13


def test_weight_change_moves_only_the_share_that_must_move() -> None:
    before = {k: pick(routes({"1": 90, "2": 10}), k) for k in KEYS}
    after = {k: pick(routes({"1": 50, "2": 50}), k) for k in KEYS}
    moved = [k for k in KEYS if before[k] != after[k]]
    assert all(before[k] == 1 and after[k] == 2 for k in moved)  # only toward the grown version
    assert 0.33 < len(moved) / len(KEYS) < 0.47  # about 40% must move


def test_unready_and_zero_weight_targets_get_no_traffic() -> None:
    r = routes({"1": 50, "2": 50, "3": 0})
    assert {pick(r, k, ready=frozenset({1, 3})) for k in KEYS[:200]} == {1}
    assert {pick(r, k) for k in KEYS[:500]} == {1, 2}
    assert (
        pick(routes({"2": 100}), "k", ready=frozenset({1})) == 1
    )  # nothing in the policy ready: latest ready


def test_policy_targets_may_be_aliases() -> None:
    r = routes({"canary": 100}, aliases={"canary": 3})
    assert pick(r, "anyone") == 3


def test_non_sticky_split_follows_weights() -> None:
    r = routes({"1": 75, "2": 25}, sticky=False)
    picks = [pick(r, "same-key") for _ in range(4000)]
    assert 0.2 < picks.count(2) / len(picks) < 0.3


def test_shadow_comparison() -> None:
    served = {"y": np.array([[0.1, 0.9], [0.8, 0.2]], np.float32)}
    same = compare(served, {"y": served["y"].copy()})
    assert same == (0.0, 2, 2)
    diff, agree, rows = compare(served, {"y": np.array([[0.6, 0.4], [0.8, 0.25]], np.float32)})
    assert diff == pytest.approx(0.5) and (agree, rows) == (1, 2)
    assert compare(served, {"y": np.zeros((3, 2), np.float32)})[0] == float("inf")
    stats = ShadowStats(2)
    stats.add(served, {"y": served["y"]})
    stats.add(served, {"y": served["y"] + 0.25})
    assert stats.compared == 2 and stats.max_abs_diff == pytest.approx(0.25) and stats.argmax_agreement == 1.0


def test_parse_weights_reads_target_weight_items() -> None:
    assert parse_weights(["2=90", "canary=10"]) == [TrafficEntry("2", 90), TrafficEntry("canary", 10)]
    assert parse_weights([]) == []
    for item in ("2", "=5", "2=ninety", "2=\u00b9", "2=-1"):
        with pytest.raises(InvalidInput, match=r"^traffic weights are TARGET=WEIGHT with a whole number"):
            parse_weights([item])
