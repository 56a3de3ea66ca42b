"""Which version serves a request: pure functions over a route table and the versions ready here.

Selectors: a number pins a version; a name follows that alias; empty follows the model's traffic
policy (weighted, sticky by routing key through weighted rendezvous hashing), else the alias
`production`, else the latest ready version. Traffic goes only to versions ready on this server.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ortserve.errors import InvalidInput, NotFound
from ortserve.records import PRODUCTION, TrafficEntry, TrafficPolicy


def is_number(text: str) -> bool:
    """Whether `text` is a version number: ASCII digits only (str.isdigit() also holds for "¹" and
    "①", which int() refuses)."""
    return text.isascii() and text.isdigit()


def parse_weights(items: Iterable[str]) -> list[TrafficEntry]:
    """`TARGET=WEIGHT` items ("2=90", "canary=5") as traffic entries, in order (the CLI's and the
    console's one reading of them)."""
    entries = []
    for item in items:
        target, sep, weight = item.partition("=")
        if not sep or not target or not is_number(weight.strip()):
            raise InvalidInput(f"traffic weights are TARGET=WEIGHT with a whole number, got {item!r}")
        entries.append(TrafficEntry(target, int(weight)))
    return entries


@dataclass(frozen=True, slots=True)
class ModelRoutes:
    """A model's aliases and traffic policy at one registry revision."""

    aliases: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    policy: TrafficPolicy | None = None

    def target(self, model: str, target: str) -> int:
        """The version a policy target (number or alias) names."""
        if is_number(target):
            return int(target)
        try:
            return self.aliases[target]
        except KeyError:
            raise NotFound(f"model {model!r} has no version or alias {target!r}") from None

    def referenced(self) -> set[int]:
        """Versions that aliases and the policy use: they stay loaded."""
        versions = set(self.aliases.values())
        policy = self.policy
        if policy is not None:
            for entry in policy.entries:
                versions.add(self._quiet(entry.target))
            if policy.shadow_target:
                versions.add(self._quiet(policy.shadow_target))
        versions.discard(0)
        return versions

    def _quiet(self, target: str) -> int:
        return int(target) if is_number(target) else self.aliases.get(target, 0)


NO_ROUTES = ModelRoutes()


def choose(
    model: str,
    selector: str,
    routes: ModelRoutes,
    *,
    ready: Callable[[int], bool],
    latest_ready: Callable[[], int | None],
    routing_key: str = "",
) -> int | None:
    """The version to serve, or None when nothing suitable is ready (pinned versions are returned as is)."""
    if selector:
        return int(selector) if is_number(selector) else routes.target(model, selector)
    policy = routes.policy
    if policy is not None and policy.entries:
        picked = _weighted(model, routes, policy, ready, routing_key)
        if picked is not None:
            return picked
    production = routes.aliases.get(PRODUCTION)
    if production is not None and ready(production):
        return production
    return latest_ready()


def _weighted(
    model: str, routes: ModelRoutes, policy: TrafficPolicy, ready: Callable[[int], bool], key: str
) -> int | None:
    candidates = []
    for entry in policy.entries:
        version = routes._quiet(entry.target)
        if entry.weight > 0 and version and ready(version):
            candidates.append((version, entry.weight))
    if not candidates:
        return None
    if policy.sticky and key:
        return max(candidates, key=lambda c: _rendezvous(key, c[0], c[1]))[0]
    return random.choices([c[0] for c in candidates], weights=[c[1] for c in candidates])[0]


def _rendezvous(key: str, version: int, weight: int) -> float:
    """Weighted rendezvous score: a key keeps its version while weights are unchanged, and a
    weight change moves only the keys that must move."""
    digest = hashlib.blake2b(f"{version}\0{key}".encode(), digest_size=8).digest()
    unit = (int.from_bytes(digest, "big") + 1) / (2**64 + 1)  # in (0, 1)
    return -weight / math.log(unit)
