"""The two container images, one per role, and where each is used.

The Dockerfile builds the `api` target (Python slim, the base dependencies, no torch, no CUDA) and the
`worker` target (CUDA base image, the CUDA build of torch, the `model` extra). Each check returns a list of
problems (empty: fine), so that the tests can also show that a broken file is caught.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tests.deploy.dockerfile import Dockerfile, Stage
from tests.deploy.settings_check import resolve_compose_defaults


@dataclass(frozen=True)
class Role:
    """One role of the service and the image that runs it."""

    name: str  # the compose service
    target: str  # the Dockerfile stage (`docker build --target`)
    image: str  # the image repository name, in compose and in the Kubernetes manifests
    deployment: str  # the Kubernetes Deployment
    command: str  # the image's CMD: the `facesr` subcommand
    port: int  # the port the image's HEALTHCHECK probes


API = Role("api", target="api", image="facesr-api", deployment="facesr-api", command="serve", port=8000)
WORKER = Role(
    "worker", target="worker", image="facesr-worker", deployment="facesr-worker", command="worker", port=9100
)
ROLES = (API, WORKER)

# Official Python image, slim variant, full version and Debian release in the tag.
PYTHON_SLIM_IMAGE = re.compile(r"python:3\.\d+\.\d+-slim-[a-z]+")
CUDA_IMAGE = re.compile(r"nvidia/cuda:\d+\.\d+\.\d+-(base|runtime)-ubuntu\d+\.\d+")
# What installs torch or the model's dependencies; none of it may appear in the API's stages.
MODEL_INSTALL_MARKERS = ("torch", "safetensors", "TORCH_INDEX_URL", "download.pytorch.org", "[model", "cuda")
# The build arguments that name each target's base image; their defaults are the real images.
BASE_IMAGE_ARGS = {"api": "PYTHON_IMAGE", "worker": "CUDA_BASE_IMAGE"}
# An extra CA bundle for pip (TLS-inspecting proxies): a BuildKit secret, mounted for the pip steps only.
CA_SECRET = "ca"
CA_SECRET_PATH = f"/run/secrets/{CA_SECRET}"
# Variables that would point a tool at a CA bundle if they stayed in an image's environment.
CA_VARIABLES = ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE")


def image_repository(image: str) -> str:
    """``registry.example.com/team/facesr-api:0.1.0`` -> ``facesr-api`` (tag and digest dropped)."""
    without_digest = image.split("@", 1)[0]
    last = without_digest.rsplit("/", 1)[-1]
    return last.split(":", 1)[0]


def _pip_installs(stage: Stage) -> list[str]:
    """Each `pip install ...` command of a stage's RUN instructions (split at && and ;)."""
    return [
        command.strip()
        for run in stage.runs
        for command in re.split(r"&&|;|\|\|", run)
        if re.search(r"\bpip3? install\b", command)
    ]


def _python_snippets(run: str) -> list[str]:
    """The code of every ``python -c "..."`` in a RUN."""
    return re.findall(r'python3? -c\s+"([^"]*)"', run)


def torch_absence_check(stage: Stage) -> str | None:
    """The Python code in this stage that fails when torch is importable, if there is one."""
    for run in stage.runs:
        for snippet in _python_snippets(run):
            if "torch" in snippet and "find_spec" in snippet and "sys.exit" in snippet:
                return snippet
    return None


# --- the Dockerfile ---------------------------------------------------------------------------------------
def _trusts_the_ca_secret(run: str) -> bool:
    """The RUN mounts the secret `ca` and points pip at it only when it was given (else pip's own CAs)."""
    mounted = re.search(rf"--mount=type=secret,id={CA_SECRET}(,|\s)", run) is not None
    conditional = re.search(rf"if \[ -s {CA_SECRET_PATH} \]; then export PIP_CERT={CA_SECRET_PATH}\b", run)
    return mounted and conditional is not None


def _apt_trusts_the_ca_secret(run: str) -> bool:
    """The RUN mounts the secret `ca` readable by apt's download user (_apt) and gives it to apt on the
    command line only when it was given (`set --` makes it the "$@" of every apt-get call): no apt.conf
    file names it, so nothing of it stays in the layer."""
    mounted = re.search(rf"--mount=type=secret,id={CA_SECRET},\S*\bmode=0?444\b", run) is not None
    conditional = (
        f"if [ -s {CA_SECRET_PATH} ]; then set -- -o Acquire::https::CAInfo={CA_SECRET_PATH}; fi" in run
    )
    calls = re.findall(r"\bapt-get\s+(\S+)", run)
    return mounted and conditional and bool(calls) and all(first == '"$@"' for first in calls)


def directive_problems(dockerfile: Dockerfile) -> list[str]:
    """No `# syntax=` line: it makes every build pull a frontend image from Docker Hub (offline builds
    and air-gapped mirrors fail); the frontend built into the engine reads this file."""
    if "syntax" in dockerfile.directives:
        return [
            f"parser directive `# syntax={dockerfile.directives['syntax']}`: every build would pull that "
            "frontend image from a registry; use the engine's built-in frontend"
        ]
    return []


def ca_problems(dockerfile: Dockerfile) -> list[str]:
    """No CA bundle in an image: nothing sets a CA variable with ENV, and no stage copies a certificate;
    every apt step can trust the CA secret (the CUDA image's apt source is HTTPS)."""
    problems = []
    for stage in dockerfile.stages:
        for arguments in stage.arguments("ENV") + stage.arguments("ARG"):
            for name in CA_VARIABLES:
                if re.search(rf"\b{name}\b", arguments):
                    problems.append(
                        f"stage {stage.name}: {name} set by ENV/ARG; set it inside the RUN that mounts "
                        f"the secret `{CA_SECRET}` only"
                    )
        for arguments in stage.arguments("COPY") + stage.arguments("ADD"):
            if re.search(r"\.(crt|pem)\b|ca-certificates|cacert", arguments):
                problems.append(f"stage {stage.name}: copies a certificate into the image: {arguments}")
        for run in stage.runs:
            if re.search(r"\bapt-get\b", run) and not _apt_trusts_the_ca_secret(run):
                problems.append(
                    f"stage {stage.name}: an apt-get step without the CA secret (--mount=type=secret,"
                    f"id={CA_SECRET},mode=0444 and -o Acquire::https::CAInfo={CA_SECRET_PATH} when given): "
                    f"{run[:80]}"
                )
    return problems


def package_copy_problems(dockerfile: Dockerfile, package_dirs: dict[str, str]) -> list[str]:
    """Every builder that installs the package (`pip install --no-deps .`) first copies every folder that
    pyproject.toml's [tool.setuptools.package-dir] maps a package to, or that install fails."""
    folders = sorted({path.split("/", 1)[0] for path in package_dirs.values()})
    problems = []
    for stage in dockerfile.stages:
        install = next(
            (
                i
                for i, (kw, a) in enumerate(stage.instructions)
                if kw == "RUN" and "pip install --no-deps ." in a
            ),
            None,
        )
        if install is None:
            continue
        copied = {
            arguments.split()[0]
            for kw, arguments in stage.instructions[:install]
            if kw == "COPY" and not arguments.startswith("--")
        }
        for folder in folders:
            if folder not in copied and f"{folder}/" not in copied:
                problems.append(
                    f"stage {stage.name}: does not copy {folder}/ (pyproject.toml package-dir) before "
                    "`pip install --no-deps .`"
                )
    return problems


def _base_arg_problems(dockerfile: Dockerfile, role: Role) -> list[str]:
    """Each stage of a target starts from the target's base-image build argument, never a literal image,
    so that a mirror or a local base can stand in (`--build-arg PYTHON_IMAGE=...`)."""
    arg = BASE_IMAGE_ARGS[role.target]
    problems = []
    if not dockerfile.global_args.get(arg):
        problems.append(f"{role.target} target: no global ARG {arg} with the real base image as default")
    for stage in dockerfile.target(role.target):
        if stage.base not in {f"${{{arg}}}", f"${arg}"}:
            problems.append(f"{role.target} target, stage {stage.name}: FROM {stage.base}, not ${{{arg}}}")
    return problems


def _builder_problems(role: Role, builder: Stage) -> list[str]:
    """The builder of a target: dependency layer from pyproject.toml before the code, pip cache mounts."""
    problems = []
    where = f"{role.target} target, stage {builder.name}"
    deps_copy = builder.index("COPY", r"\bpyproject\.toml\b")
    deps_install = builder.index("RUN", rf"requirements\.py {role.name}\b.*pip install -r")
    code_copy = builder.index("COPY", r"^(model|service)\b")
    if deps_install is None:
        problems.append(f"{where}: no `requirements.py {role.name}` step installing the dependencies")
    in_order = (
        deps_copy is not None
        and deps_install is not None
        and code_copy is not None
        and deps_copy < deps_install < code_copy
    )
    if not in_order:
        problems.append(
            f"{where}: copy pyproject.toml and install the dependencies before copying the code "
            "(else every code change reinstalls them)"
        )
    for run in builder.runs:
        if re.search(r"\bpip install\b", run) and "--mount=type=cache,target=/root/.cache/pip" not in run:
            problems.append(f"{where}: a pip install without the pip cache mount: {run[:80]}")
        if re.search(r"\bpip install\b", run) and not _trusts_the_ca_secret(run):
            problems.append(
                f"{where}: a pip install without the CA secret mount "
                f"(--mount=type=secret,id={CA_SECRET} and PIP_CERT={CA_SECRET_PATH} when given): {run[:80]}"
            )
    if not any(re.search(r"\bpip install --no-deps \.", run) for run in builder.runs):
        problems.append(f"{where}: the package itself is not installed (pip install --no-deps .)")
    return problems


def _runtime_problems(dockerfile: Dockerfile, role: Role) -> list[str]:
    """The final stage of a target: a copied venv, no installs, non-root, tini, its command and probe."""
    problems = []
    runtime = dockerfile.stage(role.target)
    where = f"{role.target} target"
    stages = dockerfile.target(role.target)
    builders = {stage.name for stage in stages[:-1]}
    if not any(re.match(r"--from=(\S+) /opt/venv /opt/venv$", a) for a in runtime.arguments("COPY")):
        problems.append(f"{where}: the virtual environment is not copied from a builder stage")
    if not runtime.copied_from & builders:
        problems.append(f"{where}: copies from no builder stage of its own ({sorted(runtime.copied_from)})")
    if _pip_installs(runtime):
        problems.append(f"{where}: installs in the runtime stage: {_pip_installs(runtime)}")
    user = (runtime.last("USER") or "root").split(":")[0]
    if user in {"root", "0"}:
        problems.append(f"{where}: runs as root")
    healthcheck = runtime.last("HEALTHCHECK") or ""
    if "facesr-healthcheck" not in healthcheck or f":{role.port}/" not in healthcheck:
        problems.append(f"{where}: HEALTHCHECK does not probe port {role.port} with facesr-healthcheck")
    if str(role.port) not in (runtime.last("EXPOSE") or "").split():
        problems.append(f"{where}: does not EXPOSE {role.port}")
    if runtime.last("ENTRYPOINT") != '["tini", "--", "facesr"]':
        problems.append(f"{where}: ENTRYPOINT is {runtime.last('ENTRYPOINT')}, not tini -- facesr")
    if runtime.last("CMD") != f'["{role.command}"]':
        problems.append(f"{where}: CMD is {runtime.last('CMD')}, not [{role.command!r}]")
    if not any(f"facesr {role.command} --help" in run for run in runtime.runs):
        problems.append(f"{where}: the build does not check that `facesr {role.command} --help` runs")
    # The interpreter that built the venv must be the one that runs it: one base image per target.
    bases = {stage.name: dockerfile.image(stage) for stage in stages}
    if len(set(bases.values())) != 1:
        problems.append(f"{where}: its stages differ in base image (and Python): {bases}")
    return problems


def api_target_problems(dockerfile: Dockerfile) -> list[str]:
    """The API image: Python slim, base dependencies only, and a build that fails if torch got in."""
    try:
        stages = dockerfile.target(API.target)
    except KeyError as error:
        return [str(error)]
    problems = _runtime_problems(dockerfile, API) + _base_arg_problems(dockerfile, API)
    builders = [stage for stage in stages[:-1] if _pip_installs(stage)]
    if not builders:
        problems.append("api target: no builder stage installs anything")
    for builder in builders:
        problems += _builder_problems(API, builder)
    for stage in stages:
        image = dockerfile.image(stage)
        if not PYTHON_SLIM_IMAGE.fullmatch(image):
            problems.append(f"api target, stage {stage.name}: base {image} is not a pinned python slim image")
        for command in _pip_installs(stage):
            found = [marker for marker in MODEL_INSTALL_MARKERS if marker.lower() in command.lower()]
            if found:
                problems.append(f"api target, stage {stage.name}: installs {found}: {command}")
        for name in ("TORCH_VERSION", "TORCH_INDEX_URL"):
            if name in stage.args:
                problems.append(f"api target, stage {stage.name}: declares {name}")
    snippet = torch_absence_check(dockerfile.stage(API.target))
    if snippet is None:
        problems.append("api target: no build step fails when torch is importable in the final image")
    return problems


def worker_target_problems(dockerfile: Dockerfile) -> list[str]:
    """The worker image: CUDA base, the CUDA build of torch first, then the `model` extra and the package."""
    try:
        stages = dockerfile.target(WORKER.target)
    except KeyError as error:
        return [str(error)]
    problems = _runtime_problems(dockerfile, WORKER) + _base_arg_problems(dockerfile, WORKER)
    for stage in stages:
        image = dockerfile.image(stage)
        if not CUDA_IMAGE.fullmatch(image):
            problems.append(f"worker target, stage {stage.name}: base {image} is not a pinned CUDA image")
    builders = [stage for stage in stages[:-1] if _pip_installs(stage)]
    if len(builders) != 1:
        return [*problems, f"worker target: expected one builder stage, found {[s.name for s in builders]}"]
    (builder,) = builders
    problems += _builder_problems(WORKER, builder)
    torch_install = builder.index(
        "RUN", r'pip install "?torch==\$\{TORCH_VERSION\}"? --index-url "?\$\{TORCH_INDEX_URL\}"?'
    )
    deps_install = builder.index("RUN", r"requirements\.py worker\b")
    if torch_install is None:
        problems.append("worker target: torch==${TORCH_VERSION} is not installed from ${TORCH_INDEX_URL}")
    elif deps_install is not None and torch_install > deps_install:
        problems.append("worker target: torch must be installed before the other dependencies")
    if not {"TORCH_VERSION", "TORCH_INDEX_URL", "REQUIRE_BUNDLED_CHECKPOINT"} <= set(builder.args):
        problems.append(f"worker target: builder ARGs are {sorted(builder.args)}")
    if not any(
        "DEFAULT_CHECKPOINT" in run and "${REQUIRE_BUNDLED_CHECKPOINT}" in run for run in builder.runs
    ):
        problems.append("worker target: the build does not check the bundled checkpoint")
    if not any(re.search(r"import torch\b", run) for run in dockerfile.stage(WORKER.target).runs):
        problems.append("worker target: the final image is not checked to import torch")
    return problems


def dockerfile_problems(dockerfile: Dockerfile, package_dirs: dict[str, str] | None = None) -> list[str]:
    problems = (
        directive_problems(dockerfile)
        + ca_problems(dockerfile)
        + api_target_problems(dockerfile)
        + worker_target_problems(dockerfile)
    )
    if package_dirs is not None:
        problems += package_copy_problems(dockerfile, package_dirs)
    return problems


# --- compose and Kubernetes -------------------------------------------------------------------------------
def compose_image_problems(services: dict[str, Any], dockerfile: Dockerfile) -> list[str]:
    """Each role's compose service builds its own target and runs it under its own image name."""
    problems = []
    for role in ROLES:
        service = services.get(role.name)
        if service is None:
            problems.append(f"compose: no service {role.name}")
            continue
        build = service.get("build")
        if not isinstance(build, dict):
            problems.append(f"compose {role.name}: no build section (long form) naming a target")
            continue
        if build.get("target") != role.target:
            problems.append(
                f"compose {role.name}: builds target {build.get('target')!r}, not {role.target!r}"
            )
        elif role.target not in dockerfile.names:
            problems.append(f"compose {role.name}: the Dockerfile has no target {role.target!r}")
        if build.get("dockerfile", "Dockerfile") != "Dockerfile" or build.get("context") != ".":
            problems.append(f"compose {role.name}: not built from ./Dockerfile")
        image = resolve_compose_defaults(service.get("image", ""))
        if image_repository(image) != role.image:
            problems.append(f"compose {role.name}: image {image!r} is not named {role.image}")
        if service.get("command") != [role.command]:
            problems.append(
                f"compose {role.name}: command {service.get('command')} is not [{role.command!r}]"
            )
    for name, service in services.items():
        if name not in {role.name for role in ROLES} and "build" in service:
            problems.append(f"compose {name}: builds from the repository but has no role image")
    if "deploy" in services.get(API.name, {}):
        devices = services[API.name]["deploy"].get("resources", {}).get("reservations", {}).get("devices")
        if devices:
            problems.append("compose api: reserves a GPU; only the workers run the model")
    return problems


def k8s_image_problems(deployments: dict[str, dict[str, Any]], kustomization: dict[str, Any]) -> list[str]:
    """Each role's Deployment runs its own image, and the kustomization rewrites each image separately."""
    problems = []
    rewrites = {entry["name"]: entry for entry in kustomization.get("images", [])}
    for role in ROLES:
        deployment = deployments.get(role.deployment)
        if deployment is None:
            problems.append(f"k8s: no Deployment {role.deployment}")
            continue
        pod = deployment["spec"]["template"]["spec"]
        for container in pod["containers"]:
            image = container["image"]
            if image_repository(image) != role.image:
                problems.append(f"k8s {role.deployment}: container {container['name']} runs {image}")
            elif image.split(":", 1)[0] not in rewrites:
                problems.append(f"k8s {role.deployment}: kustomization.yaml has no images entry for {image}")
            if role is not WORKER and "nvidia.com/gpu" in container.get("resources", {}).get("limits", {}):
                problems.append(f"k8s {role.deployment}: requests a GPU; only the workers run the model")
    targets = {
        name: image_repository(entry.get("newName", name))
        for name, entry in rewrites.items()
        if name in {role.image for role in ROLES}
    }
    if len(set(targets.values())) != len(targets):
        problems.append(f"k8s: kustomization.yaml maps the role images onto one image: {targets}")
    for name, repository in targets.items():
        if repository != name:
            problems.append(f"k8s: kustomization.yaml renames {name} to {repository}; keep the role's name")
    tags = {entry.get("newTag") for name, entry in rewrites.items() if name in targets}
    if len(tags) > 1:
        problems.append(
            f"k8s: the role images have different tags {sorted(map(str, tags))}; build both "
            "from one commit (the queue's format must match on both sides)"
        )
    return problems
