"""Alerts and dashboards: structure, coverage, and the metrics they query exist in the service's code."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.deploy import sources
from tests.deploy.check import query_problems
from tests.deploy.durations import parse_duration
from tests.deploy.metric_catalog import MetricDefinition, read_metric_definitions, series_index
from tests.deploy.promql import metric_names

REQUIRED_ALERT_SIGNALS = {
    "queue depth growing": "facesr_queue_depth",
    "p99 latency over budget": "facesr_request_duration_seconds_bucket",
    "no ready worker": "facesr_worker_ready",
    "dead letters": "facesr_dead_lettered_total",
    "5xx rate": "facesr_http_requests_total",
}
REQUIRED_DASHBOARD_SIGNALS = {
    "throughput": "facesr_inferences_total",
    "latency percentiles": "facesr_request_duration_seconds_bucket",
    "batch size": "facesr_batch_size_bucket",
    "queue depth": "facesr_queue_depth",
    "rejections": "facesr_rejected_total",
    "GPU memory": "facesr_gpu_memory_bytes",
}


@pytest.fixture(scope="module")
def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in sources.load_yaml(sources.ALERT_RULES)["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def known_series() -> dict[str, MetricDefinition]:
    assert sources.METRICS_MODULE.is_file(), "service/metrics.py defines every metric"
    return series_index(read_metric_definitions(sources.METRICS_MODULE))


def _queried_metrics(queries: list[sources.Query]) -> set[str]:
    return {name for query in queries for name in metric_names(query.expr)}


def test_every_alert_has_a_duration_severity_and_summary(alert_rules: list[dict[str, Any]]) -> None:
    for rule in alert_rules:
        name = rule["alert"]
        assert parse_duration(rule["for"]) > 0, f"{name}: a for: duration keeps one bad scrape from paging"
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert rule["annotations"]["summary"].strip() and rule["annotations"]["description"].strip(), name


def test_alerts_cover_the_required_signals() -> None:
    queried = _queried_metrics(sources.alert_queries())
    missing = {signal for signal, metric in REQUIRED_ALERT_SIGNALS.items() if metric not in queried}
    assert not missing, f"no alert on: {missing}"


def test_every_alert_is_unit_tested_firing_and_quiet(alert_rules: list[dict[str, Any]]) -> None:
    cases = [
        case for test in sources.load_yaml(sources.ALERT_TESTS)["tests"] for case in test["alert_rule_test"]
    ]
    for rule in alert_rules:
        outcomes = {bool(case["exp_alerts"]) for case in cases if case["alertname"] == rule["alert"]}
        assert outcomes == {True, False}, f"{rule['alert']}: needs a firing and a quiet test case"


def test_dashboards_cover_the_required_views() -> None:
    queried = _queried_metrics(sources.dashboard_queries())
    missing = {view for view, metric in REQUIRED_DASHBOARD_SIGNALS.items() if metric not in queried}
    assert not missing, f"no panel for: {missing}"


def test_dashboard_structure() -> None:
    datasources = sources.load_yaml(sources.GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml")
    provisioned_uids = {source["uid"] for source in datasources["datasources"]}
    files = sources.dashboard_files()
    assert files, "no dashboard provisioned"
    uids = [json.loads(path.read_text(encoding="utf-8"))["uid"] for path in files]
    assert len(set(uids)) == len(uids)
    for path in files:
        panels = sources.dashboard_panels(path)
        ids = [panel["id"] for panel in panels]
        assert len(set(ids)) == len(ids), f"{path.name}: duplicate panel ids"
        for panel in panels:
            grid = panel["gridPos"]
            assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, f"{path.name}: panel {panel['id']} width"
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] in provisioned_uids, f"{path.name}: panel {panel['id']}"
            refs = [target["refId"] for target in panel["targets"]]
            assert refs and len(set(refs)) == len(refs), f"{path.name}: panel {panel['id']} refIds"


def test_queries_use_only_defined_metrics_and_labels(known_series: dict[str, MetricDefinition]) -> None:
    queries = sources.alert_queries() + sources.dashboard_queries()
    problems = query_problems(queries, known_series)
    assert not problems, "\n".join(problems)


def test_query_check_reports_unknown_metrics_and_labels() -> None:
    known = series_index(
        {"facesr_x": MetricDefinition(name="facesr_x", kind="Counter", labels=frozenset({"reason"}), line=1)}
    )
    good = sources.Query(
        "good", 'sum by (reason) (rate(facesr_x_total{reason="a", job="j"}[$__rate_interval]))'
    )
    problems = query_problems(
        [
            good,
            sources.Query("typo", "rate(facesr_xx_total[5m])"),
            sources.Query("label", 'rate(facesr_x_total{code="500"}[5m])'),
            sources.Query("variable", "rate(facesr_x_total{reason=~'$reason'}[5m])"),
        ],
        known,
    )
    assert [problem.split(":")[0] for problem in problems] == ["typo", "label", "variable"]
