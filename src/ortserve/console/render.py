"""The console's Jinja2 environment: templates shipped in the package, every value HTML-escaped."""

from __future__ import annotations

from datetime import datetime

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from ortserve.console.views import audit_text
from ortserve.records import TrafficPolicy

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def environment() -> Environment:
    """Autoescape on for every template (HTML and CSS alike), undefined names are errors."""
    env = Environment(
        loader=PackageLoader("ortserve.console", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(bytes=human_bytes, ms=milliseconds, when=when, audit=audit_text, weights=weights)
    return env


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in _UNITS:
        if value < 1024 or unit == _UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def milliseconds(seconds: float | None) -> str:
    return "\u2013" if seconds is None else f"{seconds * 1000:.2f} ms"


def when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def weights(policy: TrafficPolicy | None) -> str:
    """A policy's weights as the traffic form takes them: "1=90 2=10"."""
    return " ".join(f"{e.target}={e.weight}" for e in policy.entries) if policy else ""
