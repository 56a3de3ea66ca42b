"""The console's actions: a form in, the same ControlPlane call as the RegistryService RPC it mirrors.

Each action names that RPC, so the console asks `TokenAuth.authorize` exactly what the gRPC API asks.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from ortserve.control import ControlPlane
from ortserve.errors import InvalidInput
from ortserve.records import PRODUCTION
from ortserve.scheduler.routing import is_number, parse_weights

_REGISTRY = "/ortserve.api.v1.RegistryService/"
Form = Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Action:
    method: str  # the RPC this action mirrors, for authorization
    run: Callable[[ControlPlane, str, Form, str], Awaitable[str]]  # control, model, form, actor -> outcome
    verb: str


async def _promote(control: ControlPlane, model: str, form: Form, actor: str) -> str:
    version = _version(form)
    alias = await control.set_alias(model, PRODUCTION, version, actor)
    return f"{model}: production -> version {alias.version} (was {alias.previous_version})"


async def _rollback(control: ControlPlane, model: str, form: Form, actor: str) -> str:
    alias = await control.rollback(model, form.get("alias", "").strip() or PRODUCTION, actor)
    return f"{model}: {alias.name} rolled back to version {alias.version}"


async def _traffic(control: ControlPlane, model: str, form: Form, actor: str) -> str:
    # TARGET=WEIGHT items separated by spaces or commas ("2=90 3=10", "production=95, canary=5");
    # empty removes the weights.
    entries = parse_weights(form.get("weights", "").replace(",", " ").split())
    policy = await control.set_traffic(model, entries, form.get("sticky") == "on", actor)
    weights = " ".join(f"{e.target}={e.weight}" for e in policy.entries) or "removed"
    return f"{model}: traffic {weights}{' (sticky)' if policy.sticky else ''}"


async def _shadow(control: ControlPlane, model: str, form: Form, actor: str) -> str:
    target = form.get("target", "").strip()
    share = _share(form.get("share", "").strip()) if target else 0.0
    policy = await control.set_shadow(model, target, share, actor)
    if not policy.shadow_target:
        return f"{model}: shadow removed"
    return f"{model}: shadow {policy.shadow_target} gets {policy.shadow_share:g} of requests"


async def _retire(control: ControlPlane, model: str, form: Form, actor: str) -> str:
    record = await control.retire(model, _version(form), actor)
    return f"{model}: version {record.version} retired"


ACTIONS: Mapping[str, Action] = {
    "promote": Action(f"{_REGISTRY}SetAlias", _promote, "promote"),
    "rollback": Action(f"{_REGISTRY}Rollback", _rollback, "roll back"),
    "traffic": Action(f"{_REGISTRY}SetTrafficPolicy", _traffic, "set traffic"),
    "shadow": Action(f"{_REGISTRY}SetShadow", _shadow, "set shadow"),
    "retire": Action(f"{_REGISTRY}RetireModelVersion", _retire, "retire"),
}


def _version(form: Form) -> int:
    text = form.get("version", "").strip()
    if not is_number(text):
        raise InvalidInput(f"version must be a version number (ASCII digits), got {text!r}")
    return int(text)


def _share(text: str) -> float:
    try:
        share = float(text)
    except ValueError:
        raise InvalidInput(f"shadow share must be a number in (0, 1], got {text!r}") from None
    if not math.isfinite(share):
        raise InvalidInput(f"shadow share must be a number in (0, 1], got {text!r}")
    return share
