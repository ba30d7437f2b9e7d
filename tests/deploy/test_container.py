"""The Dockerfile's two images, their build context, the requirements script and the image's health probe
(hadolint runs in check-deploy.sh)."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from types import ModuleType
from typing import Any

import pytest
from packaging.requirements import Requirement

from tests.deploy import sources
from tests.deploy.dockerfile import Dockerfile
from tests.deploy.http_stub import serving
from tests.deploy.images import (
    API,
    BASE_IMAGE_ARGS,
    ROLES,
    WORKER,
    api_target_problems,
    ca_problems,
    directive_problems,
    dockerfile_problems,
    package_copy_problems,
    torch_absence_check,
    worker_target_problems,
)


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return sources.dockerfile()


def _pyproject() -> dict[str, Any]:
    tomllib = pytest.importorskip("tomllib")
    with sources.PYPROJECT.open("rb") as handle:
        return tomllib.load(handle)


@pytest.fixture(scope="module")
def project() -> dict[str, Any]:
    """The [project] table of pyproject.toml (tomllib: Python 3.11+, as in both images)."""
    return _pyproject()["project"]


@pytest.fixture(scope="module")
def package_dirs() -> dict[str, str]:
    """[tool.setuptools.package-dir]: import package -> folder of the repository."""
    return _pyproject()["tool"]["setuptools"]["package-dir"]


def test_the_dockerfile_builds_an_api_and_a_worker_target(dockerfile: Dockerfile) -> None:
    assert {API.target, WORKER.target} <= set(dockerfile.names), dockerfile.names
    api_stages = {stage.name for stage in dockerfile.target(API.target)}
    worker_stages = {stage.name for stage in dockerfile.target(WORKER.target)}
    assert len(api_stages) >= 2 and len(worker_stages) >= 2, "multi-stage: a builder and a runtime each"
    assert not api_stages & worker_stages, "the targets share no stage: the API must not build the worker's"


def test_the_api_target_is_python_slim_without_torch(dockerfile: Dockerfile) -> None:
    problems = api_target_problems(dockerfile)
    assert not problems, "\n".join(problems)


def test_the_worker_target_is_cuda_with_torch_and_the_model_extra(dockerfile: Dockerfile) -> None:
    problems = worker_target_problems(dockerfile)
    assert not problems, "\n".join(problems)


def test_base_images_and_torch_are_pinned(dockerfile: Dockerfile, project: dict[str, Any]) -> None:
    base = dockerfile.global_args["CUDA_BASE_IMAGE"]
    assert base and re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-(base|runtime)-ubuntu\d+\.\d+", base), base
    python = dockerfile.global_args["PYTHON_IMAGE"]
    assert python and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-[a-z]+", python), python
    worker_args = dockerfile.target(WORKER.target)[0].args
    torch_version = worker_args["TORCH_VERSION"]
    assert torch_version == "2.13.0"
    cuda = base.split(":")[1].split("-")[0]
    major, minor, _ = cuda.split(".")
    index = worker_args["TORCH_INDEX_URL"]
    assert index and index.endswith(f"/cu{major}{minor}"), "torch wheel must match the CUDA base"
    (torch,) = [
        Requirement(r) for r in project["optional-dependencies"]["model"] if Requirement(r).name == "torch"
    ]
    assert torch.specifier.contains(torch_version), f"TORCH_VERSION {torch_version} is not {torch}"


def test_no_parser_directive_pulls_a_frontend(dockerfile: Dockerfile) -> None:
    """`# syntax=docker/dockerfile:...` would pull a frontend image from Docker Hub at every build."""
    assert not directive_problems(dockerfile), directive_problems(dockerfile)
    assert not sources.DOCKERFILE.read_text(encoding="utf-8").lstrip().startswith("# syntax")


def test_base_images_are_build_arguments_with_the_real_defaults(dockerfile: Dockerfile) -> None:
    """A mirror or a locally made base can stand in (`--build-arg`), the defaults stay the real images."""
    assert {API.target: "PYTHON_IMAGE", WORKER.target: "CUDA_BASE_IMAGE"} == BASE_IMAGE_ARGS
    for target, arg in BASE_IMAGE_ARGS.items():
        for stage in dockerfile.target(target):
            assert stage.base == f"${{{arg}}}", (target, stage.name, stage.base)
    assert (dockerfile.global_args["PYTHON_IMAGE"] or "").startswith("python:")
    assert (dockerfile.global_args["CUDA_BASE_IMAGE"] or "").startswith("nvidia/cuda:")


def test_the_extra_ca_bundle_is_a_build_secret_only(dockerfile: Dockerfile) -> None:
    """Every pip step can trust an extra CA bundle (secret `ca`), and nothing keeps it in an image."""
    assert not ca_problems(dockerfile), ca_problems(dockerfile)
    pip_runs = [run for stage in dockerfile.stages for run in stage.runs if "pip install" in run]
    assert len(pip_runs) >= 5, pip_runs
    for run in pip_runs:
        assert "--mount=type=secret,id=ca" in run, run


def test_every_package_folder_is_copied_into_the_builders(
    dockerfile: Dockerfile, package_dirs: dict[str, str]
) -> None:
    """`pip install .` needs every folder pyproject.toml maps a package to (model/, service/, client/ ...),
    in the build context and copied by each builder."""
    assert not package_copy_problems(dockerfile, package_dirs), package_copy_problems(
        dockerfile, package_dirs
    )
    folders = {path.split("/", 1)[0] for path in package_dirs.values()}
    whitelisted = {
        line.strip()[1:]
        for line in sources.DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip().startswith("!")
    }
    assert folders <= whitelisted, f".dockerignore leaves out {sorted(folders - whitelisted)}"
    for folder in folders:
        assert (sources.REPO_ROOT / folder).is_dir(), folder


def test_both_images_run_the_same_python_minor_version(dockerfile: Dockerfile) -> None:
    """The API image's Python matches Ubuntu 24.04's python3 in the worker image (3.12)."""
    python = dockerfile.global_args["PYTHON_IMAGE"] or ""
    cuda = dockerfile.global_args["CUDA_BASE_IMAGE"] or ""
    assert python.startswith("python:3.12.") and cuda.endswith("-ubuntu24.04"), (python, cuda)


# Each mutation breaks one promise of the Dockerfile; the checks must notice (they can fail).
def _move_code_before_dependencies(text: str) -> str:
    code = "COPY model ./model\nCOPY service ./service\n"
    deps = "COPY pyproject.toml"
    without = text.replace(code, "", 1)
    return without.replace(deps, code + deps, 1)


MUTATIONS: dict[str, tuple[Callable[[str], str], str]] = {
    "api on the CUDA image": (
        lambda t: t.replace("FROM ${PYTHON_IMAGE} AS api\n", "FROM ${CUDA_BASE_IMAGE} AS api\n"),
        "not a pinned python slim image",
    ),
    "api builder on another Python": (
        lambda t: t.replace(
            "FROM ${PYTHON_IMAGE} AS api-builder", "FROM python:3.11.9-slim-bookworm AS api-builder"
        ),
        "differ in base image",
    ),
    "api installs the worker's requirements": (
        lambda t: t.replace("python requirements.py api", "python requirements.py worker"),
        "requirements.py api",
    ),
    "api installs torch": (
        lambda t: t.replace("pip install --no-deps .", "pip install --no-deps . torch", 1),
        "installs ['torch']",
    ),
    "api installs the model extra": (
        lambda t: t.replace("pip install --no-deps .", "pip install '.[model]'", 1),
        "installs ['[model']",
    ),
    "api without the torch check": (
        lambda t: t.replace("u.find_spec(m)", "False"),
        "fails when torch is importable",
    ),
    "api without the serve smoke test": (
        lambda t: t.replace("facesr serve --help", "facesr --help"),
        "facesr serve --help",
    ),
    "no api target": (lambda t: t.replace(" AS api\n", " AS server\n"), "no stage 'api'"),
    "code copied before the dependencies": (_move_code_before_dependencies, "before copying the code"),
    "pip without its cache": (
        lambda t: t.replace("RUN --mount=type=cache,target=/root/.cache/pip \\\n", "RUN \\\n", 1),
        "without the pip cache mount",
    ),
    "pip without the CA secret": (
        lambda t: t.replace("    --mount=type=secret,id=ca \\\n", "", 1),
        "without the CA secret mount",
    ),
    "apt without the CA secret": (
        lambda t: t.replace("RUN --mount=type=secret,id=ca,required=false,mode=0444 \\\n    if", "RUN if", 1),
        "an apt-get step without the CA secret",
    ),
    "apt CA secret unreadable for _apt": (
        lambda t: t.replace("id=ca,required=false,mode=0444", "id=ca,required=false", 1),
        "an apt-get step without the CA secret",
    ),
    "apt without the CA option": (
        lambda t: t.replace(
            '&& apt-get "$@" install -y --no-install-recommends tini', "&& apt-get install -y tini", 1
        ),
        "an apt-get step without the CA secret",
    ),
    "CA bundle kept in the environment": (
        lambda t: t.replace(
            "ENV PIP_DISABLE_PIP_VERSION_CHECK=1\n",
            "ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CERT=/etc/ssl/proxy.pem\n",
            1,
        ),
        "PIP_CERT set by ENV/ARG",
    ),
    "CA bundle copied into the image": (
        lambda t: t.replace(
            "COPY --from=api-builder", "COPY proxy-ca.crt /etc/ssl/proxy.crt\nCOPY --from=api-builder", 1
        ),
        "copies a certificate",
    ),
    "frontend pulled by a syntax line": (
        lambda t: "# syntax=docker/dockerfile:1.7\n" + t,
        "parser directive",
    ),
    "api base image hard-coded": (
        lambda t: t.replace("FROM ${PYTHON_IMAGE} AS api\n", "FROM python:3.12.11-slim-bookworm AS api\n"),
        "not ${PYTHON_IMAGE}",
    ),
    "worker base image hard-coded": (
        lambda t: t.replace(
            "FROM ${CUDA_BASE_IMAGE} AS worker\n", "FROM nvidia/cuda:13.0.1-base-ubuntu24.04 AS worker\n"
        ),
        "not ${CUDA_BASE_IMAGE}",
    ),
    "client folder not copied": (
        lambda t: t.replace("COPY client ./client\n", "", 1),
        "does not copy client/",
    ),
    "worker torch from the default index": (
        lambda t: t.replace(' --index-url "${TORCH_INDEX_URL}"', ""),
        "is not installed from ${TORCH_INDEX_URL}",
    ),
    "worker on python slim": (
        lambda t: t.replace("FROM ${CUDA_BASE_IMAGE} AS worker\n", "FROM ${PYTHON_IMAGE} AS worker\n"),
        "not a pinned CUDA image",
    ),
    "worker runs serve": (lambda t: t.replace('CMD ["worker"]', 'CMD ["serve"]'), 'CMD is ["serve"]'),
    "worker ignores the bundled checkpoint": (
        lambda t: t.replace("${REQUIRE_BUNDLED_CHECKPOINT} and", "0 and"),
        "bundled checkpoint",
    ),
    "worker probes the API port": (
        lambda t: t.replace("http://127.0.0.1:9100/healthz", "http://127.0.0.1:8000/healthz"),
        "probe port 9100",
    ),
    "runtime as root": (lambda t: t.replace("USER 10001:10001", "USER root", 1), "api target: runs as root"),
    "no tini": (lambda t: t.replace('["tini", "--", "facesr"]', '["facesr"]', 1), "not tini -- facesr"),
}


def test_the_real_dockerfile_has_no_problems(package_dirs: dict[str, str]) -> None:
    problems = dockerfile_problems(sources.dockerfile(), package_dirs)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_the_dockerfile_checks_catch_mistakes(mutation: str, package_dirs: dict[str, str]) -> None:
    change, expected = MUTATIONS[mutation]
    original = sources.DOCKERFILE.read_text(encoding="utf-8")
    mutated = change(original)
    assert mutated != original, f"mutation {mutation!r} no longer applies to the Dockerfile"
    problems = dockerfile_problems(Dockerfile.parse(mutated), package_dirs)
    assert any(expected in problem for problem in problems), f"{expected!r} not in {problems}"


def _run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


# Run before the build step's code: torch importable (a stand-in module with a spec, so that the result does
# not depend on whether this environment has torch), or torch and safetensors hidden (as in the API image).
TORCH_PRESENT = (
    "import importlib.machinery, sys, types; torch = types.ModuleType('torch'); "
    "torch.__spec__ = importlib.machinery.ModuleSpec('torch', None); sys.modules['torch'] = torch; "
)
TORCH_ABSENT = "import sys; sys.modules['torch'] = sys.modules['safetensors'] = None; "


def test_the_api_images_torch_check_fails_where_torch_is_importable(dockerfile: Dockerfile) -> None:
    """Runs the build step's own code (the RUN's `python -c`): it must fail with torch, pass without."""
    snippet = torch_absence_check(dockerfile.stage(API.target))
    assert snippet is not None
    with_torch = _run_python(TORCH_PRESENT + snippet)
    assert with_torch.returncode != 0 and "torch" in with_torch.stderr, with_torch
    without_torch = _run_python(TORCH_ABSENT + snippet)
    assert without_torch.returncode == 0, without_torch.stderr


def test_build_context_is_a_whitelist() -> None:
    patterns = [
        line.strip()
        for line in sources.DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "exclude everything first, then name what the build needs"
    included = {pattern[1:] for pattern in patterns if pattern.startswith("!")}
    assert {"pyproject.toml", "README.md", "model", "service", "client", "deploy/docker"} <= included
    assert not included & {".venv", ".git", ".cache", "tests", "runs", "data"}
    for stage in sources.dockerfile().stages:
        for arguments in stage.arguments("COPY"):
            if arguments.startswith("--from"):
                continue
            for source in arguments.split()[:-1]:
                if not source.startswith("--"):
                    assert any(source == path or source.startswith(path + "/") for path in included), source
                    assert (sources.REPO_ROOT / source).exists(), f"COPY of missing {source}"


# --- deploy/docker/requirements.py ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def requirements_script() -> ModuleType:
    return sources.load_script(sources.REQUIREMENTS_SCRIPT)


def _names(module: ModuleType, requirements: list[str]) -> set[str]:
    return {module.requirement_name(requirement) for requirement in requirements}


def test_api_requirements_are_the_base_dependencies(
    requirements_script: ModuleType, project: dict[str, Any]
) -> None:
    api = requirements_script.requirements(project, "api")
    assert api == project["dependencies"]
    assert not _names(requirements_script, api) & {"torch", "safetensors"}, api


def test_worker_requirements_add_the_model_extra_without_torch(
    requirements_script: ModuleType, project: dict[str, Any]
) -> None:
    worker = requirements_script.requirements(project, "worker")
    model = project["optional-dependencies"]["model"]
    assert "torch" in _names(requirements_script, model), "the model extra must name torch"
    assert worker == project["dependencies"] + [r for r in model if Requirement(r).name != "torch"]
    names = _names(requirements_script, worker)
    assert "torch" not in names and "safetensors" in names


@pytest.mark.parametrize(
    ("requirement", "name"),
    [
        ("torch>=2.2", "torch"),
        ("Uvicorn[standard]>=0.29", "uvicorn"),
        ("python_multipart", "python-multipart"),
    ],
)
def test_requirement_names_are_normalized(
    requirements_script: ModuleType, requirement: str, name: str
) -> None:
    assert requirements_script.requirement_name(requirement) == name


def test_requirements_refuse_a_self_reference_and_unknown_roles(requirements_script: ModuleType) -> None:
    project = {
        "name": "facesr",
        "dependencies": ["numpy"],
        "optional-dependencies": {"model": ["facesr[extra]", "torch"]},
    }
    assert requirements_script.requirements(project, "api") == ["numpy"]
    with pytest.raises(ValueError, match="refers to the project itself"):
        requirements_script.requirements(project, "worker")
    with pytest.raises(ValueError, match="unknown role"):
        requirements_script.requirements(project, "train")


@pytest.mark.parametrize("role", [role.name for role in ROLES])
def test_requirements_script_prints_one_requirement_a_line(
    requirements_script: ModuleType, project: dict[str, Any], role: str
) -> None:
    """As the Dockerfile runs it: a plain interpreter, the working directory holding pyproject.toml."""
    result = subprocess.run(
        [sys.executable, "-I", str(sources.REQUIREMENTS_SCRIPT), role],
        cwd=sources.REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.splitlines() == requirements_script.requirements(project, role)


def test_requirements_script_rejects_a_bad_role() -> None:
    result = subprocess.run(
        [sys.executable, "-I", str(sources.REQUIREMENTS_SCRIPT), "everything"],
        cwd=sources.REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2 and "Usage" in result.stderr


# --- the health probe ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def healthcheck() -> ModuleType:
    return sources.load_script(sources.HEALTHCHECK_SCRIPT)


class _StatusHandler(BaseHTTPRequestHandler):
    """Answers GET /<code> with that HTTP status."""

    def do_GET(self) -> None:
        self.send_response(int(self.path.strip("/")))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Silence the per-request log lines."""


@pytest.fixture(scope="module")
def status_server() -> Iterator[str]:
    with serving(_StatusHandler) as url:
        yield url


def test_probe_passes_on_200_only(healthcheck: ModuleType, status_server: str) -> None:
    assert healthcheck.main([f"{status_server}/200"]) == 0
    assert healthcheck.main([f"{status_server}/503"]) == 1
    assert healthcheck.main([f"{status_server}/204"]) == 1


def test_probe_fails_cleanly_when_nothing_listens(
    healthcheck: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert healthcheck.main([f"http://127.0.0.1:{port}/healthz", "--timeout", "1"]) == 1
    assert "unreachable" in capsys.readouterr().err


def test_probe_refuses_other_schemes(healthcheck: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert healthcheck.main(["file:///etc/passwd"]) == 1
    assert "not an http(s) URL" in capsys.readouterr().err


def test_probe_refuses_a_non_positive_timeout(healthcheck: ModuleType, status_server: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        healthcheck.main([f"{status_server}/200", "--timeout", "0"])
    assert exit_info.value.code == 2
