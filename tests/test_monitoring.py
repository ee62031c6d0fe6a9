"""The Grafana dashboard and the Prometheus alert rules name only metrics (and labels) the
code defines, their PromQL is well formed, the alerts the operators need are there, and
every metric follows the naming scheme (docs/metrics.md).

The metrics are the ones prometheus-client registers when every module of services/ that
defines one is imported; the PromQL check is structural (no PromQL parser on our package
lists): balanced brackets and strings, known functions and keywords, valid range durations."""

from __future__ import annotations

import importlib
import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from dataserver.feed.v1 import feed_pb2, shard_pb2  # noqa: F401 (register their services)
from dataserver.registry.v1 import registry_pb2  # noqa: F401
from dataserver.scheduler.v1 import scheduler_pb2  # noqa: F401
from dataserver.subscription.v1 import subscription_pb2  # noqa: F401
from google.protobuf import descriptor_pool, json_format, message_factory
from prometheus_client import REGISTRY

from services.subscription.usage_gauges import user_buckets

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "deploy" / "monitoring"
SERVICE_PREFIXES = ("registry_", "subscription_", "feed_shard_", "feed_gateway_", "scheduler_")
# services/common's, shared by every process (docs/metrics.md), and prometheus-client's own.
SHARED = {"grpc_server_handling_seconds", "grpc_server_handled", "event_loop_lag_seconds"}
DEFAULT_PREFIXES = ("process_", "python_")
# Labels Prometheus adds on scrape, or Kubernetes service discovery commonly does.
TARGET_LABELS = {"job", "instance", "pod", "namespace", "container", "service", "endpoint"}

FUNCTIONS = {
    "abs", "absent", "absent_over_time", "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min",
    "count_over_time", "day_of_month", "day_of_week", "days_in_month", "delta", "deriv", "exp", "floor",
    "histogram_quantile", "holt_winters", "hour", "idelta", "increase", "irate", "label_join", "label_replace",
    "last_over_time", "ln", "log10", "log2", "max_over_time", "min_over_time", "minute", "month",
    "predict_linear", "present_over_time", "quantile_over_time", "rate", "resets", "round", "scalar", "sgn",
    "sort", "sort_desc", "sqrt", "stddev_over_time", "stdvar_over_time", "sum_over_time", "time", "timestamp",
    "vector", "year",
}  # fmt: skip
AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile",
}  # fmt: skip
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
DURATION = re.compile(r"^(\d+(ms|[smhdwy]))+$|^\$__(rate_interval|interval|range)$")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


# -- the code's metrics ---------------------------------------------------------------------


def _metric_modules() -> Iterator[str]:
    for path in sorted((ROOT / "services").rglob("*.py")):
        if "gen" in path.relative_to(ROOT).parts:
            continue
        if "prometheus_client import" in path.read_text():
            yield ".".join(path.relative_to(ROOT).with_suffix("").parts)


def _defined() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every family's name (prometheus-client strips a counter's _total), type and labels."""
    for module in _metric_modules():
        importlib.import_module(module)
    families: dict[str, tuple[str, tuple[str, ...]]] = {}
    for collector, names in list(REGISTRY._collector_to_names.items()):
        labels = tuple(getattr(collector, "_labelnames", ()))
        for family in collector.collect():
            if family.name in names or any(n.startswith(family.name) for n in names):
                families[family.name] = (family.type, labels)
    return families


DEFINED = _defined()


def _series_names() -> dict[str, tuple[str, ...]]:
    """The names PromQL can select, each with the labels its series carry."""
    series: dict[str, tuple[str, ...]] = {}
    for name, (kind, labels) in DEFINED.items():
        if kind == "counter":
            series[name + "_total"] = labels
        elif kind == "histogram":
            series[name + "_bucket"] = (*labels, "le")
            series[name + "_sum"] = labels
            series[name + "_count"] = labels
        else:
            series[name] = labels
    return series


SERIES = _series_names()


# -- PromQL, structurally ------------------------------------------------------------------


def _strip_strings(expr: str) -> tuple[str, list[str]]:
    strings: list[str] = []

    def keep(match: re.Match[str]) -> str:
        strings.append(match.group(0)[1:-1])
        return '""'

    stripped = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', keep, expr)
    assert '"' not in stripped.replace('""', "") and "'" not in stripped, f"unbalanced quotes in {expr!r}"
    return stripped, strings


def _check_brackets(expr: str) -> None:
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for char in expr:
        if char in "([{":
            stack.append(char)
        elif char in pairs:
            assert stack and stack[-1] == pairs[char], f"unbalanced {char!r} in {expr!r}"
            stack.pop()
    assert not stack, f"unclosed {stack} in {expr!r}"


def analyse(expr: str) -> dict[str, set[str]]:
    """The metric names a PromQL expression selects, each with the labels it names; fails on
    what is not well formed."""
    text, _strings = _strip_strings(expr)
    _check_brackets(text)
    for duration in re.findall(r"\[([^\]]*)\]", text):
        range_, _, step = duration.partition(":")
        assert DURATION.match(range_.strip()), f"bad range {duration!r} in {expr!r}"
        assert not step or DURATION.match(step.strip()), f"bad step {duration!r} in {expr!r}"
    text = re.sub(r"\[[^\]]*\]", "", text)
    used: dict[str, set[str]] = {}
    grouped: set[str] = set()
    # Grouping clauses: their names are labels, checked against the metrics of the expression.
    for clause in re.finditer(rf"\b({'|'.join(GROUPING)})\s*\(([^()]*)\)", text):
        grouped |= {label.strip() for label in clause.group(2).split(",") if label.strip()}
    text = re.sub(rf"\b({'|'.join(GROUPING)})\s*\([^()]*\)", " ", text)
    for selector in re.finditer(rf"({NAME})?\s*\{{([^{{}}]*)\}}", text):
        matchers = re.findall(rf"({NAME})\s*(?:=~|!~|!=|=)\s*\"\"", selector.group(2))
        assert len(matchers) == len([m for m in selector.group(2).split(",") if m.strip()]), (
            f"bad label matchers {selector.group(0)!r} in {expr!r}"
        )
        if selector.group(1):
            used.setdefault(selector.group(1), set()).update(matchers)
    text = re.sub(r"\{[^{}]*\}", " ", text)
    text = re.sub(r"(?<![\w:.])\d+(\.\d+)?(e[+-]?\d+)?", " ", text)  # numbers
    for token in re.finditer(rf"({NAME})(\s*\()?", text):
        word, call = token.group(1), token.group(2)
        if call:
            assert word in FUNCTIONS | AGGREGATIONS, f"unknown function {word!r} in {expr!r}"
        elif word not in KEYWORDS | AGGREGATIONS and not word.startswith("$"):
            used.setdefault(word, set())
    for labels in used.values():
        labels |= grouped
    return used


def _check_names(exprs: list[tuple[str, str]]) -> None:
    assert exprs
    for where, expr in exprs:
        used = analyse(expr)
        assert used, f"{where}: no metric in {expr!r}"
        for name in used:
            assert name in SERIES, f"{where}: {name} is no metric of the code ({expr!r})"
        # A label named anywhere in the expression must exist on one of its metrics (or be
        # a target label); a grouping label may come from another operand.
        known = set().union(*(SERIES[name] for name in used)) | TARGET_LABELS
        for labels in used.values():
            assert labels <= known, f"{where}: labels {labels - known} on none of {sorted(used)} ({expr!r})"


# -- the files -----------------------------------------------------------------------------


def _rules() -> dict[str, Any]:
    loaded = yaml.safe_load((MONITORING / "prometheus-rules.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def _dashboard() -> dict[str, Any]:
    loaded = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    assert isinstance(loaded, dict)
    return loaded


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for group in _rules()["spec"]["groups"] for rule in group["rules"] if "alert" in rule}


def test_the_alert_rules_are_a_prometheus_rule_for_metrics_that_exist() -> None:
    rules = _rules()
    assert rules["apiVersion"] == "monitoring.coreos.com/v1"
    assert rules["kind"] == "PrometheusRule"
    assert rules["metadata"]["name"]
    alerts = _alerts()
    _check_names([(name, rule["expr"]) for name, rule in alerts.items()])
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert rule["annotations"]["summary"], name
        assert re.fullmatch(r"(\d+[smh])+", rule.get("for", "0s")), name


def test_the_operators_alerts_are_there() -> None:
    """Budget above 90%, a connection down, instruments late for a first tick, a failed job,
    a stuck terminal stream: each an alert on the metric that says so."""
    alerts = _alerts()
    wanted = {
        "DataserverBudgetAbove90Percent": ("subscription_account_instruments", "> 0.9"),
        "DataserverBrokerConnectionDown": ("feed_shard_connected", "== 0"),
        "DataserverFirstTickLate": ("feed_shard_awaiting_first_tick_instruments", "> 0"),
        "DataserverJobFailed": ("scheduler_job_last_run_timestamp_seconds", 'outcome="failed"'),
        "DataserverTerminalStreamStuck": ("feed_gateway_stream_lag_seconds_max", ">"),
    }
    for alert, fragments in wanted.items():
        assert alert in alerts, alert
        for fragment in fragments:
            assert fragment in alerts[alert]["expr"], (alert, fragment)


def test_the_dashboard_names_only_metrics_that_exist() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] and dashboard["title"]
    panels = list(_panels(dashboard))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    exprs = [(panel["title"], target["expr"]) for panel in panels for target in panel.get("targets", [])]
    _check_names(exprs)
    titles = {panel["title"] for panel in panels if panel["type"] == "row"}
    assert {"Budget", "Feed health", "Trading day"} <= titles
    # The budget, the feed's health and the trading day, each on the dashboard.
    named = " ".join(expr for _, expr in exprs)
    for metric in (
        "subscription_account_capacity",
        "subscription_tier_instruments",
        "subscription_shard_instruments",
        "subscription_users_by_instruments",
        "subscription_evictions_total",
        "feed_shard_connected",
        "feed_shard_packets_total",
        "feed_gateway_ticks_sent_total",
        "feed_gateway_conflated_total",
        "feed_gateway_stale_instruments",
        "feed_shard_reconnects_total",
        "feed_shard_first_tick_seconds_bucket",
        "scheduler_job_runs_total",
    ):
        assert metric in named, metric


def test_every_metric_follows_the_naming_scheme() -> None:
    assert DEFINED, "no metrics found"
    for name, (kind, labels) in DEFINED.items():
        if name.startswith(DEFAULT_PREFIXES):
            continue
        assert name.startswith(SERVICE_PREFIXES) or name in SHARED, f"{name}: no service prefix"
        assert not name.endswith(("_count", "_sum", "_bucket", "_created", "_total")), f"{name}: reserved suffix"
        assert not name.endswith(("_ms", "_milliseconds", "_minutes", "_hours")), f"{name}: not a base unit"
        if kind == "histogram":
            assert name.endswith(("_seconds", "_bytes")), f"{name}: a histogram's unit"
        assert not {"job", "instance", "user", "user_id"} & set(labels), f"{name}: label {labels}"
        assert all(re.fullmatch(r"[a-z][a-z0-9_]*", label) for label in labels), f"{name}: {labels}"
        for label in labels:
            assert label != "cause", f"{name}: why-labels are named reason"


def test_the_structural_check_rejects_what_is_malformed() -> None:
    assert analyse('sum by (reason) (rate(feed_shard_reconnects_total{reason="805"}[5m]))') == {
        "feed_shard_reconnects_total": {"reason"}
    }
    for bad in (
        "sum(rate(feed_shard_packets_total[5m])",
        "rate(feed_shard_packets_total[5 m])",
        "rates(feed_shard_packets_total[5m])",
        'feed_shard_connected{shard="0}',
        "feed_shard_connected{shard}",
    ):
        with pytest.raises(AssertionError):
            analyse(bad)
    with pytest.raises(AssertionError):
        _check_names([("x", "feed_shard_no_such_metric > 0")])
    with pytest.raises(AssertionError):
        _check_names([("x", 'feed_shard_connected{account="a"} == 0')])


def test_users_are_counted_into_cumulative_buckets() -> None:
    assert user_buckets([], (10, 100)) == {"10": 0, "100": 0, "+Inf": 0}
    assert user_buckets([1, 10, 11, 100, 101, 5000], (10, 100)) == {"10": 2, "100": 4, "+Inf": 6}


# -- the README's admin actions --------------------------------------------------------------

ADMIN_ACTIONS = {
    "RegistryService/ReloadMaster",
    "SubscriptionService/GetSubscriptionStatus",
    "SubscriptionService/SetTierBPlan",
    "SubscriptionService/RecenterChain",
    "SubscriptionService/RecenterAllChains",
    "SubscriptionService/EndOfDay",
    "SubscriptionService/ReleaseExpired",
    "SubscriptionService/UnsubscribeAllTierA",
    "SubscriptionService/ClearWatchlists",
    "SubscriptionService/Rebalance",
    "SubscriptionService/RotateAccessToken",
    "GatewayService/GetShardStatus",
    "ShardService/GetStatus",
    "SchedulerService/RunJob",
    "SchedulerService/ListJobs",
    "SchedulerService/ListJobRuns",
}


def _admin_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n### Admin actions\n", 1)[1]
    return section.split("```sh\n", 1)[1].split("\n```", 1)[0]


def test_every_admin_action_in_the_readme_is_a_valid_call() -> None:
    """Each grpcurl line names a method the protos define, with a body its request parses,
    and every admin action is there."""
    variables: dict[str, str] = {}
    called: set[str] = set()
    for line in _admin_block().splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        if words[0] != "grpcurl":  # R=...; REG=...
            for assignment in " ".join(words).split(";"):
                name, _, value = assignment.strip().partition("=")
                variables[name] = value
            continue
        target = re.sub(r"\$(\w+)", lambda m: variables[m.group(1)], words[-1])
        service_name, _, method_name = target.rpartition("/")
        method = descriptor_pool.Default().FindServiceByName(service_name).FindMethodByName(method_name)
        assert method is not None, target
        body = words[words.index("-d") + 1] if "-d" in words else "{}"
        json_format.Parse(body, message_factory.GetMessageClass(method.input_type)())
        called.add(f"{service_name.rsplit('.', 1)[1]}/{method_name}")
    assert called >= ADMIN_ACTIONS, ADMIN_ACTIONS - called
