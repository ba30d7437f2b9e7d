"""The repository's deployment files, loaded for the checks: Dockerfile, compose, Kubernetes, Prometheus,
Grafana."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from tests.deploy.dockerfile import Dockerfile

# libyaml's safe loader when PyYAML was built with it (several times faster), else the pure-Python one.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
PYPROJECT = REPO_ROOT / "pyproject.toml"
DEPLOY_DIR = REPO_ROOT / "deploy"
K8S_DIR = DEPLOY_DIR / "k8s"
PROMETHEUS_CONFIG = DEPLOY_DIR / "prometheus.yml"
ALERT_RULES = DEPLOY_DIR / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY_DIR / "prometheus" / "alerts.test.yml"
GRAFANA_DIR = DEPLOY_DIR / "grafana"
DASHBOARDS_DIR = GRAFANA_DIR / "dashboards"
METRICS_MODULE = REPO_ROOT / "service" / "metrics.py"
BUNDLED_CHECKPOINT = REPO_ROOT / "model" / "checkpoints" / "default.safetensors"
KEDA_SCHEMA = Path(__file__).resolve().parent / "schemas" / "keda-scaledobject.schema.json"
DOCKER_DIR = DEPLOY_DIR / "docker"
HEALTHCHECK_SCRIPT = DOCKER_DIR / "healthcheck.py"
REQUIREMENTS_SCRIPT = DOCKER_DIR / "requirements.py"
# The CPU smoke test of the compose stack (scripts/compose-smoke.sh, `make compose-smoke`).
CPU_OVERRIDE = DEPLOY_DIR / "compose.cpu.yml"
SMOKE_DIR = DEPLOY_DIR / "smoke"
SMOKE_SCRIPT = REPO_ROOT / "scripts" / "compose-smoke.sh"
MAKEFILE = REPO_ROOT / "Makefile"


@dataclass(frozen=True)
class Query:
    """One PromQL expression and where it comes from, for error messages."""

    where: str
    expr: str


def load_yaml(path: Path) -> Any:
    """One YAML document."""
    with path.open(encoding="utf-8") as handle:
        return yaml.load(handle, Loader=_LOADER)


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    """Every non-empty document of a multi-document YAML file."""
    with path.open(encoding="utf-8") as handle:
        return [document for document in yaml.load_all(handle, Loader=_LOADER) if document is not None]


def dockerfile() -> Dockerfile:
    return Dockerfile.parse(DOCKERFILE.read_text(encoding="utf-8"))


def load_script(path: Path) -> ModuleType:
    """A standalone script of the repository (not part of a package) imported as a module."""
    spec = importlib.util.spec_from_file_location(f"facesr_deploy_{path.stem}", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE_FILE)


@dataclass(frozen=True)
class ComposeTag:
    """A Compose merge tag in an override file: ``!reset`` (drop the value) or ``!override`` (replace it)."""

    tag: str
    value: Any


class _OverrideLoader(yaml.SafeLoader):
    """PyYAML's safe loader plus Compose's merge tags, kept as ComposeTag values."""


def _compose_tag(loader: yaml.SafeLoader, node: yaml.Node) -> ComposeTag:
    if isinstance(node, yaml.MappingNode):
        value: Any = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_scalar(node)  # type: ignore[arg-type]
    return ComposeTag(node.tag, value)


_OverrideLoader.add_constructor("!reset", _compose_tag)
_OverrideLoader.add_constructor("!override", _compose_tag)


def compose_override(path: Path = CPU_OVERRIDE) -> dict[str, Any]:
    """A compose override file, its ``!reset`` / ``!override`` values as ComposeTag."""
    with path.open(encoding="utf-8") as handle:
        return yaml.load(handle, Loader=_OverrideLoader)


def kustomization() -> dict[str, Any]:
    return load_yaml(K8S_DIR / "kustomization.yaml")


def k8s_manifest_files() -> list[Path]:
    """The files kustomization.yaml lists, in order."""
    return [K8S_DIR / name for name in kustomization()["resources"]]


@cache
def k8s_documents() -> list[dict[str, Any]]:
    """Every resource the kustomization applies (parsed once per process: copy before changing one)."""
    return [document for path in k8s_manifest_files() for document in load_yaml_documents(path)]


def k8s_resource(kind: str, name: str) -> dict[str, Any]:
    """The one resource of that kind and name (KeyError naming it when absent)."""
    for document in k8s_documents():
        if document.get("kind") == kind and document.get("metadata", {}).get("name") == name:
            return document
    raise KeyError(f"no {kind} named {name} in {K8S_DIR}")


def alert_queries() -> list[Query]:
    """The expression of every alerting and recording rule."""
    queries = []
    for group in load_yaml(ALERT_RULES)["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            queries.append(Query(where=f"{ALERT_RULES.name}: {name}", expr=rule["expr"]))
    return queries


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS_DIR.glob("*.json"))


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Panels in order, including those nested in (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard_panels(path: Path) -> list[dict[str, Any]]:
    return list(_panels(json.loads(path.read_text(encoding="utf-8"))["panels"]))


def dashboard_queries() -> list[Query]:
    """The PromQL of every panel target of every provisioned dashboard."""
    queries = []
    for path in dashboard_files():
        for panel in dashboard_panels(path):
            for target in panel.get("targets", []):
                if "expr" in target:
                    title = panel.get("title", "")
                    where = f"{path.name}: panel {panel['id']} {title!r} target {target['refId']}"
                    queries.append(Query(where=where, expr=target["expr"]))
    return queries
