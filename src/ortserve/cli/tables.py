"""What `ortserve models list | show | audit | import-triton | optimize | profile ...` print: tables
and JSON documents.

A table is rendered with rich (colours, borders, wrapping) when standard output is a terminal, and
otherwise as plain text for scripts: a `# title` line, then a header line and one line per row with
the cells separated by tabs, empty cells as `-`, and a blank line between tables. `--json` prints
the documents built here; their keys are listed in the README and do not change.

Every string from the registry (model names, descriptions, labels, actors, errors) comes from users:
control characters are shown escaped (`\\x1b`), never sent to the terminal, and rich never reads
them as markup.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from rich import box
from rich.console import Console
from rich.table import Table as RichTable
from rich.text import Text

from ortserve.client import AuditEntry, ModelInfo, VersionInfo
from ortserve.client.client import Batching, ProfileResult
from ortserve.toolkit.recipes import Gate, describe, recipe_to_json
from ortserve.toolkit.report import EvaluationReport

if TYPE_CHECKING:
    from ortserve.triton_import import ModelPlan

EMPTY = "-"
BAR_WIDTH = 20
STATE_STYLES = {"ready": "green", "loading": "yellow", "failed": "bold red", "retired": "dim"}
ACTION_STYLES = {
    "register": "cyan",
    "registered": "green",
    "unchanged": "dim",
    "excluded": "dim",
    "skipped": "yellow",
    "failed": "bold red",
    "error": "bold red",
}


@dataclass(frozen=True, slots=True)
class Styled:
    """A cell made of (text, rich style) parts; the style only colours the terminal rendering."""

    parts: tuple[tuple[str, str], ...]

    @property
    def plain(self) -> str:
        return "".join(text for text, _ in self.parts)


@dataclass(frozen=True, slots=True)
class Bar:
    """A share in 0..1 drawn as a bar and a percentage."""

    share: float

    def text(self, full: str, rest: str) -> tuple[str, str, str]:
        filled = round(max(0.0, min(1.0, self.share)) * BAR_WIDTH)
        return full * filled, rest * (BAR_WIDTH - filled), f" {self.share:.0%}"


Cell = str | Styled | Bar


@dataclass(frozen=True, slots=True)
class Table:
    title: str
    columns: tuple[str, ...]
    rows: list[tuple[Cell, ...]] = field(default_factory=list)


def clean(text: str) -> str:
    """`text` with every non-printable character (escape, tab, newline, bidi controls) escaped."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def emit(tables: Sequence[Table], out: TextIO | None = None) -> None:
    """Print `tables`: rich on a terminal, tab-separated plain text otherwise."""
    out = out or sys.stdout
    if out.isatty():
        render_rich(tables, out)
    else:
        out.write(render_plain(tables))


def render_plain(tables: Sequence[Table]) -> str:
    blocks = []
    for table in tables:
        lines = [f"# {clean(table.title)}", "\t".join(table.columns)]
        lines.extend("\t".join(_plain(cell) or EMPTY for cell in row) for row in table.rows)
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def _plain(cell: Cell) -> str:
    if isinstance(cell, Bar):
        return "".join(cell.text("#", "."))
    return clean(cell.plain if isinstance(cell, Styled) else cell)


def render_rich(tables: Sequence[Table], out: TextIO, width: int | None = None) -> None:
    console = Console(file=out, width=width, highlight=False, emoji=False, markup=False)
    for table in tables:
        grid = RichTable(title=Text(clean(table.title), style="bold"), box=box.ROUNDED, title_justify="left")
        for column in table.columns:
            grid.add_column(Text(column), overflow="fold")
        for row in table.rows:
            grid.add_row(*(_rich(cell) for cell in row))
        console.print(grid)


def _rich(cell: Cell) -> Text:
    if isinstance(cell, Bar):
        full, rest, percent = cell.text("█", "░")
        return Text.assemble((full, "cyan"), (rest, "dim"), percent)
    if isinstance(cell, Styled):
        return (
            Text.assemble(*((clean(text), style) for text, style in cell.parts))
            if cell.plain
            else Text(EMPTY)
        )
    return Text(clean(cell) or EMPTY)


# -- text of values ---------------------------------------------------------------------------


def shape_text(shape: Sequence[int], batch_axis: bool = True) -> str:
    """[-1, 16] -> "[N, 16]": a dynamic first axis is the batch N, other dynamic axes are "?"."""
    dims = ["N" if i == 0 and d < 0 and batch_axis else "?" if d < 0 else str(d) for i, d in enumerate(shape)]
    return f"[{', '.join(dims)}]"


def specs_text(specs: Sequence[tuple[str, str, Sequence[int]]], batch_axis: bool = True) -> str:
    return ", ".join(f"{name} {dtype} {shape_text(shape, batch_axis)}" for name, dtype, shape in specs)


def providers_text(names: Sequence[str]) -> str:
    """CUDAExecutionProvider -> CUDA."""
    return ", ".join(name.removesuffix("ExecutionProvider") for name in names)


def batching_text(b: Batching | None) -> str:
    if b is None:
        return "server default"
    if b.max_batch_size == 0:
        return "off"
    parts = [f"max {b.max_batch_size}" if b.max_batch_size is not None else "max from model"]
    if b.max_queue_delay_us:
        parts.append(f"delay {b.max_queue_delay_us}us")
    if b.preferred_batch_sizes:
        parts.append(f"preferred {list(b.preferred_batch_sizes)}")
    if b.max_queue_size:
        parts.append(f"queue {b.max_queue_size}")
    return ", ".join(parts)


def time_text(at: datetime | None) -> str:
    return f"{at:%Y-%m-%d %H:%M:%S}" if at is not None else ""


def state_cell(state: str) -> Styled:
    return Styled(((state, STATE_STYLES.get(state, "")),))


# -- models list ------------------------------------------------------------------------------


def models_table(models: Sequence[ModelInfo]) -> Table:
    rows: list[tuple[Cell, ...]] = []
    for m in models:
        parts: list[tuple[str, str]] = []
        for v in m.versions:
            parts.extend([(", ", "")] if parts else [])
            parts.append((f"{v.version}:{v.state}", STATE_STYLES.get(v.state, "")))
        versions = Styled(tuple(parts))
        aliases = ", ".join(f"{name}={version}" for name, version in sorted(m.aliases.items()))
        rows.append((m.name, versions, aliases, _weights_text(m), m.description))
    return Table("models", ("MODEL", "VERSIONS", "ALIASES", "TRAFFIC", "DESCRIPTION"), rows)


def _weights_text(m: ModelInfo) -> str:
    if m.traffic is None or not m.traffic.weights:
        return ""
    text = " ".join(f"{target}={weight}" for target, weight in m.traffic.weights.items())
    return text + (" (sticky)" if m.traffic.sticky else "")


# -- models show ------------------------------------------------------------------------------


def model_tables(m: ModelInfo) -> list[Table]:
    tables = [_summary_table(m)]
    if m.aliases:
        rows: list[tuple[Cell, ...]] = [(name, str(v)) for name, v in sorted(m.aliases.items())]
        tables.append(Table("aliases", ("ALIAS", "VERSION"), rows))
    if m.traffic is not None and m.traffic.weights:
        tables.append(_traffic_table(m))
    if m.traffic is not None and m.traffic.shadow_target:
        tables.append(_shadow_table(m))
    tables.append(versions_table(m.versions))
    tables.extend(derived_tables(m.versions))
    return tables


def _summary_table(m: ModelInfo) -> Table:
    ready = sum(v.state == "ready" for v in m.versions)
    has_weights = m.traffic is not None and bool(m.traffic.weights)
    if has_weights:
        routing = "traffic policy (below)"
    elif "production" in m.aliases:
        routing = f"alias production -> version {m.aliases['production']}"
    else:
        routing = "the latest ready version"
    rows: list[tuple[Cell, ...]] = [
        ("model", m.name),
        ("description", m.description),
        ("versions", f"{len(m.versions)} ({ready} ready on this server)"),
        ("requests without a version go to", routing),
    ]
    if not m.aliases:
        rows.append(("aliases", "none"))
    if not has_weights:
        rows.append(("traffic policy", "none"))
    if m.traffic is None or not m.traffic.shadow_target:
        rows.append(("shadow", "none"))
    return Table(f"model {m.name}", ("FIELD", "VALUE"), rows)


def _traffic_table(m: ModelInfo) -> Table:
    assert m.traffic is not None
    total = sum(m.traffic.weights.values()) or 1
    rows: list[tuple[Cell, ...]] = [
        (target, str(weight), Bar(weight / total)) for target, weight in m.traffic.weights.items()
    ]
    sticky = ", sticky by routing key" if m.traffic.sticky else ""
    return Table(f"traffic policy{sticky}", ("TARGET", "WEIGHT", "SHARE"), rows)


def _shadow_table(m: ModelInfo) -> Table:
    assert m.traffic is not None
    columns = ("TARGET", "SHARE", "VERSION", "COMPARED", "ERRORS", "MAX ABS DIFF", "ARGMAX AGREEMENT")
    s = m.shadow
    measured: tuple[Cell, ...] = (
        (
            str(s.shadow_version),
            str(s.compared),
            str(s.errors),
            f"{s.max_abs_diff:.6g}",
            Bar(s.argmax_agreement),
        )
        if s is not None and s.compared
        else ("", "0", "", "", "no comparison yet")
    )
    row = (m.traffic.shadow_target, Bar(m.traffic.shadow_share), *measured)
    return Table("shadow comparison (on the server that answered)", columns, [row])


def versions_table(versions: Sequence[VersionInfo]) -> Table:
    columns: tuple[str, ...] = ("VERSION", "STATE", "PROVIDER", "INPUTS", "OUTPUTS", "CREATED BY")
    columns += ("CREATED AT (UTC)", "DESCRIPTION", "ERROR")
    rows: list[tuple[Cell, ...]] = [
        (
            str(v.version),
            state_cell(v.state),
            providers_text(v.providers)
            or (f"wants {providers_text(v.preferred_providers)}" if v.preferred_providers else ""),
            specs_text(v.inputs, v.batch_axis),
            specs_text(v.outputs, v.batch_axis),
            v.created_by,
            time_text(v.create_time),
            v.description,
            Styled(((v.error, "red"),)),
        )
        for v in versions
    ]
    return Table("versions", columns, rows)


# -- derived versions (models show, optimize, quantize, fp16) -----------------------------------


def derived_tables(versions: Sequence[VersionInfo]) -> list[Table]:
    """The derived versions among `versions`: source, recipe and report figures; then per output."""
    derived = [v for v in versions if v.derived_from is not None]
    if not derived:
        return []
    columns: tuple[str, ...] = ("VERSION", "DERIVED FROM", "RECIPE", "SAMPLES", "SIZE", "LATENCY BATCH 1")
    columns += ("LATENCY BATCH 32", "GATE")
    rows: list[tuple[Cell, ...]] = [
        (
            str(v.version),
            f"version {v.derived_from}",
            describe(v.recipe) if v.recipe is not None else "",
            *_report_cells(v.report),
        )
        for v in derived
    ]
    outputs: list[tuple[Cell, ...]] = [
        (
            str(v.version),
            o.name,
            f"{o.max_abs_diff:.6g}",
            f"{o.mean_abs_diff:.6g}",
            Bar(o.argmax_agreement) if o.argmax_agreement is not None else "",
        )
        for v in derived
        if v.report is not None
        for o in v.report.outputs
    ]
    columns_out = ("VERSION", "OUTPUT", "MAX ABS DIFF", "MEAN ABS DIFF", "ARGMAX AGREEMENT")
    return [
        Table("derived versions (figures: derived / source)", columns, rows),
        Table("derived versions: outputs compared with the source", columns_out, outputs),
    ]


def _report_cells(r: EvaluationReport | None) -> tuple[Cell, ...]:
    if r is None:
        return ("", "", "", "", "")
    return (
        f"{r.samples} ({r.sample_rows} rows)",
        f"{r.size_ratio:.2f}x",
        _latency_text(r.latency_ratio_batch1, r.source_latency_ms_batch1),
        _latency_text(r.latency_ratio_batch32, r.source_latency_ms_batch32),
        gate_text(r.gate) if r.gate is not None else Styled((("none", "yellow"),)),
    )


def _latency_text(ratio: float, source_ms: float) -> str:
    return f"{ratio:.2f}x (source {source_ms:.3g} ms)" if ratio else "not measured"


def gate_text(gate: Gate) -> str:
    """ "max abs diff <= 0.05, argmax agreement >= 0.99"."""
    parts = [f"max abs diff <= {gate.max_abs_diff:g}"] if gate.max_abs_diff is not None else []
    parts += [f"argmax agreement >= {gate.min_agreement:g}"] if gate.min_agreement is not None else []
    return ", ".join(parts) or "none"


def report_text(r: EvaluationReport) -> str:
    """One line: the worst figures per output and the size ratio (for warnings)."""
    figures = [
        f"{o.name} max abs diff {o.max_abs_diff:.6g}"
        + (f", argmax agreement {o.argmax_agreement:.4f}" if o.argmax_agreement is not None else "")
        for o in r.outputs
    ]
    return "; ".join([*figures, f"size {r.size_ratio:.2f}x of the source"])


# -- models profile ---------------------------------------------------------------------------


def profile_table(title: str, profile: ProfileResult, top: int) -> Table:
    rows: list[tuple[Cell, ...]] = [
        (o.op_type, o.node, str(o.calls), f"{o.total_us / 1000:.3f}", Bar(o.share))
        for o in profile.operators[:top]
    ]
    return Table(title, ("OPERATOR", "NODE", "CALLS", "TOTAL (MS)", "SHARE"), rows)


def profile_json(profile: ProfileResult) -> dict[str, Any]:
    return {
        "operators": [
            {"op_type": o.op_type, "node": o.node, "calls": o.calls, "total_us": o.total_us, "share": o.share}
            for o in profile.operators
        ],
        "mean_run_ms": profile.mean_run_ms,
        "providers": list(profile.providers),
    }


# -- models audit -----------------------------------------------------------------------------


def audit_table(entries: Sequence[AuditEntry]) -> Table:
    """Most recent first. Plain rows start `DATE TIME<tab>ACTION`: whitespace field 3 is the action."""
    rows: list[tuple[Cell, ...]] = [
        (
            time_text(e.time),
            e.action,
            e.model,
            str(e.version) if e.version else "",
            e.actor,
            change_text(e.before, e.after),
        )
        for e in entries
    ]
    return Table("audit log", ("TIME (UTC)", "ACTION", "MODEL", "VERSION", "ACTOR", "CHANGE"), rows)


def change_text(before: Any, after: Any) -> str:
    """What an audit record changed: the keys whose values differ, or what was created (--json has all)."""
    if isinstance(before, dict) and isinstance(after, dict):
        keys = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        return (
            "; ".join(f"{k}: {_brief(before.get(k))} -> {_brief(after.get(k))}" for k in keys) or "no change"
        )
    if before is None and isinstance(after, dict):
        return ", ".join(f"{k}={_brief(v)}" for k, v in sorted(after.items()))
    return f"{_brief(before)} -> {_brief(after)}"


def _brief(value: Any, limit: int = 48) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- models import-triton -------------------------------------------------------------------


def import_tables(root: Path, plans: Sequence[ModelPlan], dry_run: bool) -> list[Table]:
    rows: list[tuple[Cell, ...]] = []
    for p in plans:
        batching, providers = batching_text(p.batching), providers_text(p.providers) or "server default"
        if p.status in ("skipped", "error"):
            rows.append((p.name, "", _action(p.status), "", "", "", p.reason))
        rows.extend(
            (
                p.name,
                str(v.triton_version),
                _action(v.action),
                str(v.version or ""),
                batching,
                providers,
                v.detail,
            )
            for v in p.versions
        )
    columns = ("MODEL", "TRITON VERSION", "ACTION", "VERSION", "BATCHING", "PROVIDERS", "DETAIL")
    title = f"Triton repository {root}" + (" (dry run: nothing registered)" if dry_run else "")
    tables = [Table(title, columns, rows)]
    dropped: list[tuple[Cell, ...]] = [(p.name, d.what, d.reason) for p in plans for d in p.dropped]
    if dropped:
        tables.append(Table("not carried over", ("MODEL", "WHAT", "WHY"), dropped))
    return tables


def _action(action: str) -> Styled:
    return Styled(((action, ACTION_STYLES.get(action, "")),))


def import_summary(plans: Sequence[ModelPlan], dry_run: bool) -> str:
    actions = [v.action for p in plans for v in p.versions]
    statuses = [p.status for p in plans]
    if dry_run:
        head = f"dry run: {actions.count('register')} version(s) to register"
    else:
        head = (
            f"{actions.count('registered')} version(s) registered, {actions.count('unchanged')} unchanged, "
            f"{actions.count('failed')} failed"
        )
    return (
        f"{head}; {actions.count('excluded')} excluded by version_policy; "
        f"{statuses.count('skipped')} model(s) skipped, {statuses.count('error')} unreadable"
    )


def import_json(root: Path, plans: Sequence[ModelPlan], dry_run: bool) -> dict[str, Any]:
    return {
        "repository": str(root),
        "dry_run": dry_run,
        "models": [
            {
                "name": p.name,
                "status": p.status,
                "reason": p.reason,
                "config_file": p.config_file,
                "version_policy": p.version_policy,
                "batching": batching_json(p.batching) if p.batching is not None else None,
                "providers": list(p.providers),
                "versions": [
                    {
                        "triton_version": v.triton_version,
                        "file": v.file,
                        "action": v.action,
                        "version": v.version or None,
                        "state": v.state,
                        "detail": v.detail,
                    }
                    for v in p.versions
                ],
                "not_carried_over": [{"what": d.what, "reason": d.reason} for d in p.dropped],
            }
            for p in plans
        ],
    }


# -- JSON -------------------------------------------------------------------------------------


def batching_json(b: Batching) -> dict[str, Any]:
    return {
        "max_batch_size": b.max_batch_size,
        "max_queue_delay_us": b.max_queue_delay_us,
        "preferred_batch_sizes": list(b.preferred_batch_sizes),
        "max_queue_size": b.max_queue_size,
        "max_concurrent_batches": b.max_concurrent_batches,
    }


def _spec_json(specs: Sequence[tuple[str, str, Sequence[int]]]) -> list[dict[str, Any]]:
    return [{"name": name, "dtype": dtype, "shape": list(shape)} for name, dtype, shape in specs]


def version_json(v: VersionInfo) -> dict[str, Any]:
    return {
        "version": v.version,
        "state": v.state,
        "error": v.error,
        "sha256": v.sha256,
        "size_bytes": v.size_bytes,
        "inputs": _spec_json(v.inputs),
        "outputs": _spec_json(v.outputs),
        "batch_axis": v.batch_axis,
        "providers": list(v.providers),
        "preferred_providers": list(v.preferred_providers),
        "batching": batching_json(v.batching),
        "description": v.description,
        "labels": dict(v.labels),
        "created_by": v.created_by,
        "create_time": v.create_time.isoformat() + "Z" if v.create_time is not None else None,
        "fallback_providers": list(v.fallback_providers),
        "sample_rows": v.sample_rows,
        "derived_from": v.derived_from,
        "recipe": recipe_to_json(v.recipe) if v.recipe is not None else None,
        "report": v.report.to_json() if v.report is not None else None,
    }


def model_json(m: ModelInfo) -> dict[str, Any]:
    traffic = m.traffic
    shadow = m.shadow
    return {
        "name": m.name,
        "description": m.description,
        "aliases": dict(m.aliases),
        "traffic": {
            "weights": dict(traffic.weights),
            "sticky": traffic.sticky,
            "shadow_target": traffic.shadow_target,
            "shadow_share": traffic.shadow_share,
        }
        if traffic is not None
        else None,
        "shadow": {
            "shadow_version": shadow.shadow_version,
            "compared": shadow.compared,
            "errors": shadow.errors,
            "max_abs_diff": shadow.max_abs_diff,
            "argmax_agreement": shadow.argmax_agreement,
        }
        if shadow is not None
        else None,
        "versions": [version_json(v) for v in m.versions],
    }


def audit_json(e: AuditEntry) -> dict[str, Any]:
    return {
        "time": e.time.isoformat() + "Z",
        "actor": e.actor,
        "action": e.action,
        "model": e.model,
        "version": e.version,
        "before": e.before,
        "after": e.after,
    }


def print_json(document: Any, out: TextIO | None = None) -> None:
    print(json.dumps(document, indent=2), file=out or sys.stdout)
