"""docker-compose.yml: what the Compose schema cannot say (scripts/check-deploy.sh checks the schema)."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.deploy import sources
from tests.deploy.durations import parse_duration
from tests.deploy.images import API, WORKER, compose_image_problems
from tests.deploy.settings_check import facesr_variables, settings_errors

# Seconds Docker must wait after the worker's drain budget before it may SIGKILL.
GRACE_MARGIN_S = 10.0


def _flag_values(command: list[str]) -> dict[str, str]:
    """Flag -> value: ``["redis-server", "--save", "", "--appendonly", "no"]`` -> ``{"--save": "", ...}``."""
    return {command[i]: command[i + 1] for i in range(1, len(command) - 1) if command[i].startswith("--")}


def _healthcheck_url(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    urls = [part for part in test if str(part).startswith("http")]
    assert len(urls) == 1, f"expected one URL in healthcheck {test}"
    return urls[0]


def test_the_stack_has_its_services(services: dict[str, Any]) -> None:
    assert {"redis", "api", "worker", "prometheus", "grafana"} <= set(services)


def test_each_role_builds_and_runs_its_own_image(services: dict[str, Any]) -> None:
    problems = compose_image_problems(services, sources.dockerfile())
    assert not problems, "\n".join(problems)
    assert services[API.name]["image"] != services[WORKER.name]["image"]


def _swap_targets(services: dict[str, Any]) -> None:
    api, worker = services[API.name]["build"], services[WORKER.name]["build"]
    api["target"], worker["target"] = worker["target"], api["target"]


def _one_image_for_both(services: dict[str, Any]) -> None:
    services[WORKER.name]["image"] = services[API.name]["image"]


def _gpu_for_the_api(services: dict[str, Any]) -> None:
    services[API.name]["deploy"] = copy.deepcopy(services[WORKER.name]["deploy"])


def _short_build(services: dict[str, Any]) -> None:
    services[API.name]["build"] = "."


def _worker_runs_serve(services: dict[str, Any]) -> None:
    services[WORKER.name]["command"] = ["serve"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (_swap_targets, "builds target 'worker', not 'api'"),
        (_one_image_for_both, "is not named facesr-worker"),
        (_gpu_for_the_api, "reserves a GPU"),
        (_short_build, "no build section"),
        (_worker_runs_serve, "is not ['worker']"),
    ],
)
def test_the_image_checks_catch_mistakes(
    services: dict[str, Any], change: Callable[[dict[str, Any]], None], expected: str
) -> None:
    mutated = copy.deepcopy(services)
    change(mutated)
    problems = compose_image_problems(mutated, sources.dockerfile())
    assert any(expected in problem for problem in problems), f"{expected!r} not in {problems}"


def test_worker_can_be_scaled(services: dict[str, Any]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker, "a fixed name allows one replica only"
    assert "ports" not in worker, "a published host port collides between replicas; use expose"
    assert str(worker["environment"]["FACESR_METRICS_PORT"]) in {str(port) for port in worker["expose"]}


def test_worker_reserves_an_nvidia_gpu(services: dict[str, Any]) -> None:
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        device.get("driver") == "nvidia" and "gpu" in device.get("capabilities", []) for device in devices
    ), devices
    assert services["worker"]["environment"]["FACESR_DEVICE"].startswith("cuda")


def test_worker_grace_period_outlasts_its_drain(services: dict[str, Any]) -> None:
    worker = services["worker"]
    drain = parse_duration(worker["x-drain-timeout"])
    grace = parse_duration(worker["stop_grace_period"])
    assert grace >= drain + GRACE_MARGIN_S, f"stop_grace_period {grace}s must exceed the drain {drain}s"


def test_every_service_has_a_healthcheck(services: dict[str, Any]) -> None:
    for name, service in services.items():
        test = service.get("healthcheck", {}).get("test")
        assert isinstance(test, list) and test[0] in {"CMD", "CMD-SHELL"}, f"{name}: healthcheck {test}"


def test_dependencies_wait_for_health_and_form_an_order(services: dict[str, Any]) -> None:
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on needs conditions (long form)"
        for dependency, rule in depends_on.items():
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck to wait for"
    for role in ("api", "worker"):
        assert services[role]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"

    started: list[str] = []
    pending = dict(services)
    while pending:
        startable = [name for name, s in pending.items() if set(s.get("depends_on", {})) <= set(started)]
        assert startable, f"depends_on has a cycle among {sorted(pending)}"
        started.extend(sorted(startable))
        for name in startable:
            del pending[name]
    assert started[0] == "redis"


def test_redis_is_a_bounded_queue_without_persistence(services: dict[str, Any]) -> None:
    flags = _flag_values(services["redis"]["command"])
    assert re.fullmatch(r"\d+(mb|gb)", flags["--maxmemory"]), flags
    assert flags["--maxmemory-policy"] == "noeviction"
    assert flags["--save"] == ""
    assert flags["--appendonly"] == "no"


def test_api_runs_several_processes_with_multiprocess_metrics(services: dict[str, Any]) -> None:
    api = services["api"]
    environment = api["environment"]
    assert int(environment["FACESR_WORKERS"]) > 1
    metrics_dir = environment["PROMETHEUS_MULTIPROC_DIR"]
    tmpfs_targets = {entry.split(":", 1)[0] for entry in api["tmpfs"]}
    assert metrics_dir in tmpfs_targets, "the multiprocess folder must start empty: mount a tmpfs there"


def test_healthchecks_probe_the_right_ports(services: dict[str, Any]) -> None:
    api_url = urlsplit(_healthcheck_url(services["api"]))
    assert api_url.port == int(services["api"]["environment"]["FACESR_PORT"])
    assert api_url.path in {"/healthz", "/readyz"}
    worker_url = urlsplit(_healthcheck_url(services["worker"]))
    assert worker_url.port == int(services["worker"]["environment"]["FACESR_METRICS_PORT"])
    assert worker_url.path in {"/healthz", "/readyz"}


def test_both_sides_of_the_queue_agree(services: dict[str, Any]) -> None:
    shared = ("FACESR_REDIS_URL", "FACESR_QUEUE_PREFIX", "FACESR_MAX_DELIVERIES", "FACESR_HEARTBEAT_TTL_S")
    api, worker = services["api"]["environment"], services["worker"]["environment"]
    for name in shared:
        assert api[name] == worker[name], name
    redis_url = urlsplit(api["FACESR_REDIS_URL"])
    assert redis_url.hostname in services and redis_url.hostname == "redis"


def test_third_party_images_are_pinned(services: dict[str, Any]) -> None:
    for name, service in services.items():
        if "build" in service:
            continue
        image = service["image"]
        assert re.fullmatch(r"[\w./-]+:[\w.-]+", image) and not image.endswith(":latest"), f"{name}: {image}"


def test_bind_mounts_exist_in_the_repository(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (sources.REPO_ROOT / source).exists(), f"{name} mounts missing {source}"


def test_prometheus_finds_the_rules_where_its_config_says(services: dict[str, Any]) -> None:
    mounts = dict(reversed(volume.split(":")[:2]) for volume in services["prometheus"]["volumes"])
    config_target = next(target for target, src in mounts.items() if src == "./deploy/prometheus.yml")
    config = sources.load_yaml(sources.PROMETHEUS_CONFIG)
    for rule_file in config["rule_files"]:
        in_container = str(PurePosixPath(config_target).parent / rule_file)
        assert mounts.get(in_container) == f"./{sources.ALERT_RULES.relative_to(sources.REPO_ROOT)}"


def test_prometheus_scrapes_every_replica_of_api_and_worker(services: dict[str, Any]) -> None:
    config = sources.load_yaml(sources.PROMETHEUS_CONFIG)
    discovered = {
        name: sd["port"]
        for job in config["scrape_configs"]
        for sd in job.get("dns_sd_configs", [])
        for name in sd["names"]
    }
    assert discovered.get("api") == int(services["api"]["environment"]["FACESR_PORT"])
    assert discovered.get("worker") == int(services["worker"]["environment"]["FACESR_METRICS_PORT"])


def test_grafana_reads_the_provisioned_dashboards(services: dict[str, Any]) -> None:
    mounts = dict(volume.split(":")[:2] for volume in services["grafana"]["volumes"])
    dashboards_target = mounts["./deploy/grafana/dashboards"]
    providers = sources.load_yaml(sources.GRAFANA_DIR / "provisioning" / "dashboards" / "facesr.yml")
    assert providers["providers"][0]["options"]["path"] == dashboards_target
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (sources.DASHBOARDS_DIR / PurePosixPath(home).relative_to(dashboards_target)).is_file()
    datasources = sources.load_yaml(sources.GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml")
    assert urlsplit(datasources["datasources"][0]["url"]).hostname == "prometheus"


@pytest.mark.usefixtures("service_settings", "no_facesr_environment")
@pytest.mark.parametrize("role", ["api", "worker"])
def test_service_settings_accept_the_environment(role: str, services: dict[str, Any]) -> None:
    variables = facesr_variables(services[role]["environment"])
    assert variables, f"{role} sets no FACESR_* variable"
    errors = settings_errors(variables)
    assert not errors, "\n".join(errors)
