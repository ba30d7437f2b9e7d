"""deploy/k8s: invariants across manifests and with the code (scripts/check-deploy.sh checks the schemas)."""

from __future__ import annotations

import copy
import re
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.deploy import sources
from tests.deploy.durations import parse_duration
from tests.deploy.images import API as API_ROLE
from tests.deploy.images import WORKER as WORKER_ROLE
from tests.deploy.images import k8s_image_problems
from tests.deploy.k8s_validation import keda_errors
from tests.deploy.settings_check import facesr_variables, settings_errors

# The card name of the bundled checkpoint: the model whose job stream KEDA watches.
SERVED_MODEL = "dic-small-300w"

GRACE_MARGIN_S = 10.0
API, WORKER, REDIS = "facesr-api", "facesr-worker", "facesr-redis"


def _deployments() -> list[dict[str, Any]]:
    return [document for document in sources.k8s_documents() if document["kind"] == "Deployment"]


def _pod(deployment_name: str) -> dict[str, Any]:
    return sources.k8s_resource("Deployment", deployment_name)["spec"]["template"]["spec"]


def _container(deployment_name: str) -> dict[str, Any]:
    (container,) = _pod(deployment_name)["containers"]
    return container


def _config() -> dict[str, str]:
    return sources.k8s_resource("ConfigMap", "facesr-config")["data"]


def _scaled_object() -> dict[str, Any]:
    return sources.k8s_resource("ScaledObject", WORKER)


def _port_number(container: dict[str, Any], port: int | str) -> int:
    """A probe's port, which may name one of the container's ports."""
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p["name"] == port)


def _probe(container: dict[str, Any], kind: str) -> tuple[str, int]:
    action = container[kind]["httpGet"]
    return action["path"], _port_number(container, action["port"])


def test_kustomization_applies_every_manifest() -> None:
    listed = {path.name for path in sources.k8s_manifest_files()}
    on_disk = {path.name for path in sources.K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk, f"not listed: {on_disk - listed}; missing: {listed - on_disk}"
    kustomization = sources.kustomization()
    namespaces = {d["metadata"]["name"] for d in sources.k8s_documents() if d["kind"] == "Namespace"}
    assert namespaces == {kustomization["namespace"]}


def test_images_are_pinned() -> None:
    for deployment in _deployments():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            image = container["image"]
            assert re.fullmatch(r"[\w./-]+:[\w.-]+", image) and not image.endswith(":latest"), image
    for image in sources.kustomization()["images"]:
        assert image["newTag"] and image["newTag"] != "latest"


def _role_deployments() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: copy.deepcopy(d) for d in _deployments() if d["metadata"]["name"] != REDIS}


def test_each_role_runs_its_own_image() -> None:
    problems = k8s_image_problems(_role_deployments(), sources.kustomization())
    assert not problems, "\n".join(problems)
    images = {_container(name)["image"].split(":")[0] for name in (API, WORKER)}
    assert images == {API_ROLE.image, WORKER_ROLE.image}


def _k8s_mutated(change: str) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    deployments, kustomization = _role_deployments(), copy.deepcopy(sources.kustomization())
    api = deployments[API]["spec"]["template"]["spec"]["containers"][0]
    worker = deployments[WORKER]["spec"]["template"]["spec"]["containers"][0]
    if change == "api-runs-the-worker-image":
        api["image"] = worker["image"]
    elif change == "images-swapped":
        api["image"], worker["image"] = worker["image"], api["image"]
    elif change == "one-registry-image":
        for entry in kustomization["images"]:
            entry["newName"] = "registry.example.com/facesr"
    elif change == "no-rewrite-for-the-worker":
        kustomization["images"] = [e for e in kustomization["images"] if e["name"] != WORKER_ROLE.image]
    elif change == "tags-differ":
        kustomization["images"][0]["newTag"] = "0.0.9"
    elif change == "api-takes-a-gpu":
        api["resources"]["limits"]["nvidia.com/gpu"] = 1
    return deployments, kustomization


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("api-runs-the-worker-image", "runs facesr-worker"),
        ("images-swapped", "runs facesr-api"),
        ("one-registry-image", "onto one image"),
        ("no-rewrite-for-the-worker", "no images entry for facesr-worker"),
        ("tags-differ", "different tags"),
        ("api-takes-a-gpu", "requests a GPU"),
    ],
)
def test_the_image_checks_catch_mistakes(change: str, expected: str) -> None:
    problems = k8s_image_problems(*_k8s_mutated(change))
    assert any(expected in problem for problem in problems), f"{expected!r} not in {problems}"


@pytest.mark.parametrize("name", [API, WORKER, REDIS])
def test_pods_are_non_root_and_hardened(name: str) -> None:
    pod = _pod(name)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod.get("automountServiceAccountToken") is False
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"]["drop"] == ["ALL"]
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), f"{name}: requests"
        assert "memory" in resources["limits"], f"{name}: memory limit"


@pytest.mark.parametrize("name", [API, WORKER, REDIS])
def test_selectors_match_their_pods(name: str) -> None:
    deployment = sources.k8s_resource("Deployment", name)
    selector = deployment["spec"]["selector"]["matchLabels"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()


@pytest.mark.parametrize(("service", "deployment"), [(API, API), (REDIS, REDIS)])
def test_services_reach_their_pods(service: str, deployment: str) -> None:
    spec = sources.k8s_resource("Service", service)["spec"]
    template = sources.k8s_resource("Deployment", deployment)["spec"]["template"]
    assert spec["selector"].items() <= template["metadata"]["labels"].items()
    container = _container(deployment)
    for port in spec["ports"]:
        _port_number(container, port["targetPort"])  # StopIteration if the named port does not exist


def test_api_probes_and_multiprocess_metrics() -> None:
    container = _container(API)
    port = int(next(e["value"] for e in container["env"] if e["name"] == "FACESR_PORT"))
    assert _probe(container, "livenessProbe") == ("/healthz", port)
    assert _probe(container, "readinessProbe") == ("/readyz", port)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert int(env["FACESR_WORKERS"]) > 1
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volume_name = mounts[env["PROMETHEUS_MULTIPROC_DIR"]]
    volumes = sources.k8s_resource("Deployment", API)["spec"]["template"]["spec"]["volumes"]
    assert "emptyDir" in next(v for v in volumes if v["name"] == volume_name), (
        "multiproc dir must start empty"
    )


def test_worker_takes_a_gpu_and_leaves_replicas_to_keda() -> None:
    deployment = sources.k8s_resource("Deployment", WORKER)
    assert "replicas" not in deployment["spec"], "re-applying would reset KEDA's replica count"
    container = _container(WORKER)
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    tolerations = deployment["spec"]["template"]["spec"]["tolerations"]
    assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)


def test_worker_probes_use_its_metrics_port() -> None:
    container = _container(WORKER)
    metrics_port = int(_config()["FACESR_METRICS_PORT"])
    assert _probe(container, "livenessProbe") == ("/healthz", metrics_port)
    assert _probe(container, "readinessProbe") == ("/readyz", metrics_port)
    assert container["ports"][0]["containerPort"] == metrics_port


def test_worker_termination_grace_outlasts_its_drain(services: dict[str, Any]) -> None:
    drain = parse_duration(services["worker"]["x-drain-timeout"])
    grace = sources.k8s_resource("Deployment", WORKER)["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"
    ]
    assert grace >= drain + GRACE_MARGIN_S


def test_redis_is_a_bounded_queue_inside_its_memory_limit() -> None:
    container = _container(REDIS)
    args = container["args"]
    flags = {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--")}
    assert flags["--maxmemory-policy"] == "noeviction"
    assert flags["--save"] == "" and flags["--appendonly"] == "no"
    maxmemory_mib = int(flags["--maxmemory"].removesuffix("mb"))
    limit = container["resources"]["limits"]["memory"]
    limit_mib = (
        int(limit.removesuffix("Gi")) * 1024 if limit.endswith("Gi") else int(limit.removesuffix("Mi"))
    )
    assert maxmemory_mib < limit_mib, "Redis must refuse writes before the kernel kills it"


def test_redis_url_points_at_the_redis_service() -> None:
    url = urlsplit(_config()["FACESR_REDIS_URL"])
    service = sources.k8s_resource("Service", REDIS)
    assert url.hostname == service["metadata"]["name"]
    assert url.port == service["spec"]["ports"][0]["port"]


@pytest.mark.usefixtures("service_settings", "no_facesr_environment")
@pytest.mark.parametrize("name", [API, WORKER])
def test_service_settings_accept_the_configuration(name: str) -> None:
    container = _container(name)
    environment = dict(_config())
    environment.update({e["name"]: e["value"] for e in container["env"] if "value" in e})
    errors = settings_errors(facesr_variables(environment))
    assert not errors, "\n".join(errors)


# --- KEDA ---------------------------------------------------------------------------------------------
def test_keda_scales_the_worker_deployment() -> None:
    spec = _scaled_object()["spec"]
    target = spec["scaleTargetRef"]
    assert (target.get("kind", "Deployment"), target["name"]) == ("Deployment", WORKER)
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"], "zero workers would never be woken"


def test_keda_reads_the_redis_service_in_the_kustomized_namespace() -> None:
    namespace = sources.kustomization()["namespace"]
    service = sources.k8s_resource("Service", REDIS)
    expected = f"{REDIS}.{namespace}.svc.cluster.local:{service['spec']['ports'][0]['port']}"
    for trigger in _scaled_object()["spec"]["triggers"]:
        assert trigger["metadata"]["address"] == expected


def test_keda_watches_the_stream_and_group_the_workers_use() -> None:
    prefix = _config()["FACESR_QUEUE_PREFIX"]
    triggers = _scaled_object()["spec"]["triggers"]
    kinds = {key for t in triggers for key in ("lagCount", "pendingEntriesCount") if key in t["metadata"]}
    assert kinds == {"lagCount", "pendingEntriesCount"}, "scale up on lag, hold on pending entries"
    from facesr.service.queue.keys import GROUP, Keys

    group, stream = GROUP, Keys(prefix).jobs(SERVED_MODEL)
    for trigger in triggers:
        assert trigger["type"] == "redis-streams"
        assert trigger["metadata"]["consumerGroup"] == group
        assert trigger["metadata"]["stream"] == stream


def test_keda_stream_names_the_bundled_model() -> None:
    from facesr.model.checkpoint import read_card

    assert sources.BUNDLED_CHECKPOINT.is_file(), "the package must bundle its default checkpoint"
    name = read_card(sources.BUNDLED_CHECKPOINT).name
    assert name == SERVED_MODEL
    for trigger in _scaled_object()["spec"]["triggers"]:
        assert trigger["metadata"]["stream"].endswith(f":jobs:{name}")


def test_keda_schema_accepts_the_manifest() -> None:
    errors = keda_errors(_scaled_object())
    assert not errors, "\n".join(errors)


def _mutated(change: str) -> dict[str, Any]:
    document = copy.deepcopy(_scaled_object())
    spec = document["spec"]
    metadata = spec["triggers"][0]["metadata"]
    if change == "misspelled-trigger-key":
        metadata["lagCounts"] = metadata.pop("lagCount")
    elif change == "unquoted-count":
        metadata["lagCount"] = 64
    elif change == "lag-and-pending-mixed":
        metadata["pendingEntriesCount"] = "32"
    elif change == "no-stream":
        del metadata["stream"]
    elif change == "no-address":
        del metadata["address"]
    elif change == "unknown-spec-field":
        spec["maxReplicas"] = 4
    elif change == "no-target":
        del spec["scaleTargetRef"]
    elif change == "wrong-api-version":
        document["apiVersion"] = "keda.k8s.io/v1alpha1"
    return document


@pytest.mark.parametrize(
    "change",
    [
        "misspelled-trigger-key",
        "unquoted-count",
        "lag-and-pending-mixed",
        "no-stream",
        "no-address",
        "unknown-spec-field",
        "no-target",
        "wrong-api-version",
    ],
)
def test_keda_schema_rejects_mistakes(change: str) -> None:
    assert keda_errors(_mutated(change)) != []
