"""The PromQL helpers behind the metric-name check."""

from __future__ import annotations

import pytest

from tests.deploy.promql import metric_names, selector_labels, substitute_grafana_variables


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("facesr_queue_depth", {"facesr_queue_depth"}),
        ("sum(rate(facesr_batches_total[5m]))", {"facesr_batches_total"}),
        # grouping labels, functions and aggregations are not metrics, wherever the clause stands
        ("histogram_quantile(0.99, sum by (le, phase) (rate(h_bucket[5m])))", {"h_bucket"}),
        ("sum(rate(a_total[5m])) by (code)", {"a_total"}),
        ("sum without (instance) (b)", {"b"}),
        # label values, regexes, durations, offsets, numbers and keywords neither
        ('x{route="/v1/super-resolve", code=~"5.."} offset 1h > 1e3', {"x"}),
        ("deriv(max(q)[10m:1m]) > 0 and on() (c or vector(0)) unless d", {"q", "c", "d"}),
        ("a / ignoring(code) group_left b > bool 0.5", {"a", "b"}),
        ("recorded:rate:5m", {"recorded:rate:5m"}),
        ('count_values("value", v)', {"v"}),
    ],
)
def test_metric_names(expr: str, expected: set[str]) -> None:
    assert metric_names(expr) == expected


def test_selector_labels() -> None:
    expr = 'sum(rate(x_total{route="/a", code!~"2.."}[5m])) / sum(rate(x_total{job="api"}[5m])) + y'
    assert selector_labels(expr) == {"x_total": {"route", "code", "job"}}


def test_braces_inside_label_values_are_not_selectors() -> None:
    assert selector_labels('x{path="/a{b}"}') == {"x": {"path"}}
    assert metric_names('x{path="{y}"}') == {"x"}


@pytest.mark.parametrize("variable", ["$__rate_interval", "${__rate_interval}", "[[__interval]]", "$__range"])
def test_interval_variables_become_durations(variable: str) -> None:
    assert substitute_grafana_variables(f"rate(x[{variable}])") in {"rate(x[1m])", "rate(x[1h])"}


def test_other_dashboard_variables_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\$instance"):
        substitute_grafana_variables('x{instance="$instance"}')
