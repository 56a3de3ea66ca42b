"""The monitoring pack in deploy/monitoring against a real server.

After real traffic (successes, refused and failed requests, a stream with a bad message, shadow
comparisons and a shadow failure, a FAILED version, a failed registry poll), a scrape of /metrics over
HTTP must hold every metric that the Grafana dashboard and the alert rules name, with every label they
filter, group, match or print by. Expressions are parsed by a real PromQL parser; the labels a query's
result carries are derived through its aggregations, functions and vector matching, so a `by` label
missing from the series inside, a division whose sides cannot match, or a legend naming a label the
result no longer has are found too. Where promtool is installed (Debian's prometheus package, see
scripts/install_client_toolchains.sh) the rules also pass `promtool check rules` and the unit tests in
alerts_test.yaml, and every dashboard query passes promtool's parser as a recording rule.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import promql_parser as pq
import pytest
import yaml
from grpc import aio

from ortserve.api.v1 import inference_service_pb2 as ipb
from ortserve.api.v1 import inference_service_pb2_grpc as ipb_grpc
from ortserve.client.client import to_tensor
from ortserve.config import ServerConfig
from ortserve.errors import Unavailable
from ortserve.records import BatchingSettings, ProviderSpec, VersionState
from ortserve.scheduler.batch_queue import Flush
from ortserve.server.app import OrtServer
from tests import onnx_models
from tests.integration.test_control_faults import until
from tests.integration.test_metrics import scrape

PACK = Path(__file__).parents[2] / "deploy" / "monitoring"
DASHBOARD = PACK / "ortserve-dashboard.json"
ALERTS = PACK / "alerts.yaml"
ALERT_TESTS = PACK / "alerts_test.yaml"
TARGET_LABELS = frozenset({"job", "instance"})  # Prometheus adds these to every scraped series
# Grafana's built-in variables, replaced by durations valid in PromQL.
GRAFANA_BUILTINS = {"__rate_interval": "1m", "__interval": "1m", "__range": "1h"}
# The values a label may take, where the server has a closed set: a matcher on another value is a typo.
LABEL_VALUES = {
    "code": frozenset(c.name for c in grpc.StatusCode),
    "state": frozenset(s.value for s in VersionState),
    "reason": frozenset(f.value for f in Flush),
}
Labels = frozenset[str]


# --- PromQL: which metrics and labels a query uses, checked against a scrape -------------------


@dataclass
class Checker:
    """Walks PromQL ASTs against `series` (sample name -> label names) and collects problems."""

    series: Mapping[str, Labels]
    problems: list[str] = field(default_factory=list)
    used: set[str] = field(default_factory=set)

    def check(self, where: str, promql: str, printed: Labels = frozenset()) -> Labels | None:
        """Check one query; `printed` are the labels its legend or annotations show."""
        try:
            expr = pq.parse(promql)
        except (ValueError, RuntimeError) as exc:
            self.problems.append(f"{where}: does not parse: {exc}")
            return None
        before = len(self.problems)
        result = self.labels(expr)
        self.problems[before:] = [f"{where}: {p}" for p in self.problems[before:]]
        missing = printed - (result or frozenset())
        if missing:
            self.problems.append(
                f"{where}: shows {sorted(missing)}, not in its result {sorted(result or ())}"
            )
        return result

    def labels(self, expr: Any) -> Labels | None:
        """The labels of the expression's result series; None for a scalar or a string."""
        kind = type(expr).__name__
        if kind in ("NumberLiteral", "StringLiteral"):
            return None
        if kind in ("ParenExpr", "UnaryExpr", "SubqueryExpr"):
            return self.labels(expr.expr)
        if kind == "MatrixSelector":
            return self.selector(expr.vector_selector)
        if kind == "VectorSelector":
            return self.selector(expr)
        if kind == "Call":
            return self.call(expr)
        if kind == "AggregateExpr":
            return self.aggregate(expr)
        if kind == "BinaryExpr":
            return self.binary(expr)
        self.problems.append(f"no rule for {kind} in this check; extend Checker.labels")
        return frozenset()

    def selector(self, selector: Any) -> Labels:
        name = selector.name
        if name is None or name not in self.series:
            self.problems.append(f"metric {name!r} is not in the scrape")
            return frozenset()
        self.used.add(name)
        labels = self.series[name]
        for matcher in selector.matchers.matchers:
            if matcher.name not in labels:
                self.problems.append(f"{name} has no label {matcher.name!r} (it has {sorted(labels)})")
            self.check_value(name, matcher)
        return labels

    def check_value(self, name: str, matcher: Any) -> None:
        known = LABEL_VALUES.get(matcher.name)
        if known is None or not re.fullmatch(r"[A-Za-z_|]+", matcher.value):
            return
        for value in matcher.value.split("|"):
            if value not in known:
                self.problems.append(f"{name}{{{matcher.name}}} never takes the value {value!r}")

    def call(self, call: Any) -> Labels | None:
        vectors = [labels for arg in call.args if (labels := self.labels(arg)) is not None]
        if call.func.name == "histogram_quantile":
            inner = vectors[0] if vectors else frozenset()
            if "le" not in inner:
                self.problems.append(f"histogram_quantile over series without 'le': {sorted(inner)}")
            return inner - {"le"}
        if call.func.name.startswith("label_") or call.func.name in ("absent", "absent_over_time"):
            self.problems.append(f"{call.func.name} changes labels; extend Checker.call before using it")
        return vectors[0] if vectors else None

    def aggregate(self, agg: Any) -> Labels:
        inner = self.labels(agg.expr) or frozenset()
        op = str(agg.op)
        if op == "count_values":
            self.problems.append("count_values adds a label; extend Checker.aggregate before using it")
        grouping = agg.modifier
        named = frozenset(grouping.labels) if grouping is not None else frozenset()
        for label in sorted(named - inner):
            self.problems.append(f"{op} groups by {label!r}, which the series inside lack ({sorted(inner)})")
        if op in ("topk", "bottomk", "limitk"):
            return inner
        if grouping is None:
            return frozenset()
        return named if grouping.type == pq.AggModifierType.By else inner - named

    def binary(self, expr: Any) -> Labels | None:
        lhs, rhs = self.labels(expr.lhs), self.labels(expr.rhs)
        if lhs is None or rhs is None:
            return lhs if rhs is None else rhs
        modifier = expr.modifier
        matching = modifier.matching if modifier is not None else None
        op = str(expr.op)
        if matching is None:
            if lhs != rhs:
                self.problems.append(f"'{op}' matches on all labels, but {sorted(lhs)} != {sorted(rhs)}")
            return lhs | rhs if op == "or" else lhs
        on = frozenset(matching.labels)
        including = matching.type == pq.LabelModifierType.Include
        for label in sorted(on - (lhs & rhs if including else lhs | rhs)):
            self.problems.append(f"'{op}' matches on {label!r}, which a side lacks")
        group = frozenset(modifier.group_labels or ())
        if op in ("and", "or", "unless") or group:
            return lhs | rhs if op == "or" else lhs | group
        return on if including else lhs - on


def sample_labels(samples: Mapping[tuple[str, tuple[tuple[str, str], ...]], float]) -> dict[str, Labels]:
    """Sample name (with _bucket, _count, _sum, _total as exported) -> its label names, target labels too."""
    series: dict[str, set[str]] = {}
    for name, labels in samples:
        series.setdefault(name, set(TARGET_LABELS)).update(label for label, _ in labels)
    return {name: frozenset(labels) for name, labels in series.items()}


def family(sample: str) -> str:
    """The metric family of an exported sample name (histogram parts, a counter's total and created)."""
    return re.sub(r"_(bucket|count|sum|total|created)$", "", sample)


# --- the dashboard and the rules as queries ---------------------------------------------------


@dataclass(frozen=True)
class Query:
    where: str
    promql: str
    printed: Labels


def printed_labels(*templates: str) -> Labels:
    """Labels a Grafana legend ({{model}}) or an alert annotation ({{ $labels.model }}) prints."""
    text = " ".join(templates)
    legend = re.findall(r"\{\{\s*(\w+)\s*\}\}", text)
    return frozenset(legend + re.findall(r"\$labels\.(\w+)", text))


def substitute(text: str, variables: Mapping[str, str], where: str) -> str:
    """Replace Grafana's $name and ${name} by values valid in PromQL; unknown variables fail."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in variables:
            raise AssertionError(f"{where}: uses ${name}, which the dashboard does not define")
        return variables[name]

    return re.sub(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))", value, text)


def dashboard_queries(dashboard: Mapping[str, Any]) -> Iterator[Query]:
    defined = {v["name"]: ".*" for v in dashboard["templating"]["list"]}
    variables = {**GRAFANA_BUILTINS, **defined}
    for variable in dashboard["templating"]["list"]:
        where = f"dashboard variable {variable['name']}"
        text = substitute(variable["definition"], variables, where)
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", text)
        assert match, f"{where}: expected label_values(selector, label), got {text!r}"
        # The label it lists must be in the selector's result: check it as if printed.
        yield Query(where, match.group(1), frozenset({match.group(2)}))
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            where = f"panel {panel['title']!r} query {target['refId']}"
            legend = target.get("legendFormat", "")
            yield Query(where, substitute(target["expr"], variables, where), printed_labels(legend))


def alert_rules() -> Iterator[dict[str, Any]]:
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        yield from group["rules"]


def rule_queries() -> Iterator[Query]:
    for rule in alert_rules():
        texts = [*rule.get("annotations", {}).values(), *rule.get("labels", {}).values()]
        yield Query(f"alert {rule['alert']}", rule["expr"], printed_labels(*texts))


def alert_test_series() -> Iterator[Query]:
    """The input series of alerts_test.yaml: they must look like the real ones."""
    for number, test in enumerate(yaml.safe_load(ALERT_TESTS.read_text())["tests"]):
        for series in test["input_series"]:
            yield Query(f"alerts_test.yaml test {number}", series["series"], frozenset())


def all_queries() -> list[Query]:
    return [*dashboard_queries(json.loads(DASHBOARD.read_text())), *rule_queries(), *alert_test_series()]


# --- a server after real traffic ----------------------------------------------------------------


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[OrtServer]:
    """`linear` 1 (production) with 2 as its shadow and 3 FAILED (its warm-up fails); `queued`, whose
    queue holds one request that waits 200 ms for company; `fallback`, which prefers a provider no
    pip-installed ONNX Runtime offers (MIGraphX) and runs on CPU."""
    config = ServerConfig(port=0, metrics_port=0, data_dir=str(tmp_path / "data"), poll_interval_s=0.05)
    server = OrtServer(config)
    registry = server.parts.control.registry
    for version in (1, 2, 3):
        path = tmp_path / f"linear{version}.onnx"
        onnx_models.linear(path, seed=version) if version < 3 else onnx_models.fails_at_run(path)
        registry.register_file(path, "linear")
    registry.promote("linear", 1)
    registry.set_shadow("linear", "2", 1.0)
    onnx_models.linear(tmp_path / "queued.onnx")
    small = BatchingSettings(max_batch_size=8, max_queue_delay_us=200_000, max_queue_size=1)
    registry.register_file(tmp_path / "queued.onnx", "queued", batching=small)
    lost = (ProviderSpec("MIGraphXExecutionProvider"), ProviderSpec("CPUExecutionProvider"))
    registry.register_file(tmp_path / "queued.onnx", "fallback", providers=lost)
    await server.start()
    await server.parts.control.settle()
    yield server
    await server.stop(0)


def rows(model: str = "linear", width: int = 16) -> ipb.PredictRequest:
    return ipb.PredictRequest(model=model, inputs=[to_tensor("x", np.ones((1, width), np.float32))])


async def send_traffic(stub: ipb_grpc.InferenceServiceStub) -> None:
    await asyncio.gather(*(stub.Predict(rows(), timeout=10) for _ in range(6)))
    await stub.Predict(rows("fallback"), timeout=10)
    with pytest.raises(aio.AioRpcError):
        await stub.Predict(rows(width=15), timeout=10)
    stream = stub.PredictStream()
    for number, request in enumerate((rows(), rows(width=15))):
        await stream.write(ipb.PredictStreamRequest(id=str(number), request=request))
    answers = [await stream.read() for _ in range(2)]
    await stream.done_writing()
    assert [a.HasField("error") for a in answers] == [False, True]
    await refuse_one(stub)


async def refuse_one(stub: ipb_grpc.InferenceServiceStub) -> None:
    """Bursts at `queued` until its one-request queue refuses one (RESOURCE_EXHAUSTED)."""
    for _ in range(20):
        calls = [stub.Predict(rows("queued"), timeout=10) for _ in range(4)]
        codes = [
            c.code()
            for c in await asyncio.gather(*calls, return_exceptions=True)
            if isinstance(c, grpc.RpcError)
        ]
        if grpc.StatusCode.RESOURCE_EXHAUSTED in codes:
            return
    raise AssertionError("a queue of one never refused a request in 20 bursts of 4")


async def fail_a_shadow_and_a_poll(
    server: OrtServer, stub: ipb_grpc.InferenceServiceStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    control, shadows = server.parts.control, server.parts.core.shadows
    await until(lambda: shadows["linear"].compared >= 6, "version 2 to shadow the six requests")
    await control.set_shadow("linear", "3", 1.0, actor="test")  # version 3 is FAILED
    await stub.Predict(rows(), timeout=10)
    await until(lambda: shadows["linear"].errors >= 1, "the shadow failure to be counted")
    registry, real = control.registry, control.registry.revision
    refusals = iter([Unavailable("registry unreachable (test)")])

    def revision() -> int:
        refusal = next(refusals, None)
        if refusal is not None:
            raise refusal
        return real()

    monkeypatch.setattr(registry, "revision", revision)
    polls = server.parts.metrics.poll_failures.labels("Unavailable")
    await until(lambda: polls.value >= 1, "a failed registry poll to be counted")


# --- the tests ----------------------------------------------------------------------------------


async def test_every_metric_and_label_of_the_dashboard_and_rules_is_in_a_real_scrape(
    server: OrtServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = ipb_grpc.InferenceServiceStub(channel)
        await send_traffic(stub)
        await fail_a_shadow_and_a_poll(server, stub, monkeypatch)
    samples = await asyncio.to_thread(scrape, server.metrics_port)

    # The conditions the alerts look for happened here, under the labels they use.
    def value(name: str, **labels: str) -> float:
        return sum(v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items())

    assert value("ortserve_request_errors_total", code="RESOURCE_EXHAUSTED", model="queued") >= 1
    assert value("ortserve_model_version_state", model="linear", version="3", state="failed") == 1
    assert value("ortserve_model_version_state", model="linear", version="1", state="ready") == 1
    assert value("ortserve_model_version_memory_bytes", model="linear", version="1") >= 0
    assert value("ortserve_queue_capacity", model="queued", version="1") == 1
    assert value("ortserve_registry_revision") == server.parts.control.registry.revision()
    assert value("ortserve_registry_poll_failures_total", error="Unavailable") >= 1
    assert value("ortserve_shadow_compared_total", model="linear", version="2") >= 6
    assert value("ortserve_shadow_errors_total", model="linear", version="3") >= 1
    assert value("ortserve_stream_message_errors_total", code="INVALID_ARGUMENT") == 1
    migraphx_first = "MIGraphXExecutionProvider,CPUExecutionProvider"
    assert value("ortserve_provider_fallback", model="fallback", requested=migraphx_first) == 1

    checker = Checker(sample_labels(samples))
    for query in all_queries():
        checker.check(query.where, query.promql, query.printed)
    assert not checker.problems, "\n".join(checker.problems)
    # And the dashboard shows every family the server exports.
    exported = {family(name) for name in checker.series}
    shown = {family(name) for name in checker.used}
    assert exported - shown == set(), "exported but on no panel: add them to ortserve-dashboard.json"


def test_the_checker_finds_wrong_names_labels_matching_and_legends() -> None:
    series = {
        "a_total": frozenset({"model", "version", "code", *TARGET_LABELS}),
        "b_count": frozenset({"model", "version", *TARGET_LABELS}),
        "h_bucket": frozenset({"model", "le", *TARGET_LABELS}),
        "g": frozenset(TARGET_LABELS),
    }
    checker = Checker(series)
    good = "sum by (model, version) (rate(a_total[5m])) / sum by (model, version) (rate(b_count[5m])) > 0.1"
    assert checker.check("good", good, frozenset({"model"})) == {"model", "version"}
    assert checker.check("q", "histogram_quantile(0.9, sum by (le, model) (rate(h_bucket[1m])))") == {"model"}
    assert checker.check("spread", "max by (job) (g) - min by (job) (g)") == {"job"}
    assert checker.problems == []
    bad = {
        "a_tota": "metric 'a_tota' is not in the scrape",
        'a_total{state="x"}': "a_total has no label 'state'",
        'a_total{code="QUEUE_FULL"}': "never takes the value 'QUEUE_FULL'",
        "sum by (reason) (a_total)": "groups by 'reason'",
        "rate(a_total[1m]) / rate(b_count[1m])": "matches on all labels",
        "a_total / on(code) b_count": "matches on 'code', which a side lacks",
        "histogram_quantile(0.9, sum by (model) (rate(h_bucket[1m])))": "without 'le'",
        "sum(rate(a_total[1m": "does not parse",
    }
    for promql, problem in bad.items():
        checker.problems.clear()
        checker.check("bad", promql)
        assert any(problem in p for p in checker.problems), (promql, checker.problems)
    checker.problems.clear()
    checker.check("legend", "sum by (model) (a_total)", printed_labels("{{model}} v{{version}}"))
    assert checker.problems == ["legend: shows ['version'], not in its result ['model']"]


def test_the_dashboard_is_importable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert [i["pluginId"] for i in dashboard["__inputs"]] == ["prometheus"]
    assert dashboard["schemaVersion"] >= 39  # Grafana 11
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    datasources = {json.dumps(t["datasource"]) for p in dashboard["panels"] for t in p.get("targets", [])}
    assert datasources == {json.dumps({"type": "prometheus", "uid": "${DS_PROMETHEUS}"})}


PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (Debian's prometheus package: scripts/install_client_toolchains.sh)",
)


def promtool(*args: str, cwd: Path = PACK) -> None:
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, *args], check=False, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_the_alert_rules_pass_promtool() -> None:
    promtool("check", "rules", ALERTS.name)
    promtool("test", "rules", ALERT_TESTS.name)


@needs_promtool
def test_every_dashboard_query_passes_promtool(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    rules = [
        {"record": f"ortserve_dashboard:query_{number}", "expr": query.promql}
        for number, query in enumerate(dashboard_queries(dashboard))
        if not query.where.startswith("dashboard variable")
    ]
    (tmp_path / "dashboard.yaml").write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": rules}]}))
    promtool("check", "rules", "dashboard.yaml", cwd=tmp_path)
