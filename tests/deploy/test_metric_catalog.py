"""Reading prometheus_client metric definitions from source."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy.metric_catalog import MetricSourceError, read_metric_definitions, series_index


def _write(tmp_path: Path, source: str) -> Path:
    path = tmp_path / "metrics.py"
    path.write_text(source, encoding="utf-8")
    return path


def test_every_kind_and_its_exposed_series(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
import prometheus_client as pc
from prometheus_client import Counter, Gauge as G, Histogram, Info
JOBS = Counter("app_jobs_total", "doc", ["kind"])
WAIT = Histogram("wait", "doc", labelnames=("phase",), namespace="app", unit="seconds")
DEPTH = G("app_depth", "doc")
BUILD = Info("app_build", "doc")
LAST = pc.Summary(name="app_size", documentation="doc")
""",
    )
    definitions = read_metric_definitions(path)
    assert set(definitions) == {"app_jobs", "app_wait_seconds", "app_depth", "app_build", "app_size"}
    assert definitions["app_jobs"].labels == {"kind"}
    assert definitions["app_wait_seconds"].labels == {"phase", "le"}
    assert set(series_index(definitions)) == {
        "app_jobs_total", "app_jobs_created",
        "app_wait_seconds_bucket", "app_wait_seconds_sum",
        "app_wait_seconds_count", "app_wait_seconds_created",
        "app_depth",
        "app_build_info",
        "app_size_sum", "app_size_count", "app_size_created",
    }  # fmt: skip


def test_module_constants_are_resolved(tmp_path: Path) -> None:
    path = _write(tmp_path, 'from prometheus_client import Gauge\nN = "app_up"\nUP = Gauge(N, "doc")\n')
    assert set(read_metric_definitions(path)) == {"app_up"}


def test_other_counters_are_not_metrics(tmp_path: Path) -> None:
    path = _write(tmp_path, "from collections import Counter\nSEEN = Counter()\n")
    assert read_metric_definitions(path) == {}


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ('from prometheus_client import Counter\nC = Counter(f"{1}", "doc")\n', "not a string literal"),
        ('from prometheus_client import Counter\nC = Counter("a", "d", LABELS)\n', "literal list"),
        (
            'from prometheus_client import Gauge\nA = Gauge("a", "d")\nB = Gauge("a", "d")\n',
            "already defined",
        ),
    ],
)
def test_unreadable_definitions_are_errors(tmp_path: Path, source: str, message: str) -> None:
    with pytest.raises(MetricSourceError, match=message):
        read_metric_definitions(_write(tmp_path, source))
