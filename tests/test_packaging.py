"""The distribution: every package folder is installed under its import name, and the base install
(the API alone) asks for no torch."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

REPO_ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def _import_name(folder: Path) -> str:
    """The import name a package folder is installed as, through [tool.setuptools.package-dir]."""
    mapping = PYPROJECT["tool"]["setuptools"]["package-dir"]
    relative = folder.relative_to(REPO_ROOT).as_posix()
    best = max(
        (prefix for prefix in mapping.items() if relative.startswith(prefix[1])), key=lambda p: len(p[1])
    )
    name, root = best
    rest = relative.removeprefix(root).strip("/")
    return ".".join([name, *rest.split("/")]) if rest else name


def test_every_package_folder_is_listed_under_its_import_name() -> None:
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    # Every top-level folder that package-dir maps (model, service, client, ...) is searched.
    tops = sorted({root.split("/")[0] for root in PYPROJECT["tool"]["setuptools"]["package-dir"].values()})
    folders = [p.parent for top in tops for p in (REPO_ROOT / top).rglob("__init__.py")]
    expected = {_import_name(folder) for folder in folders}
    assert {"facesr.train", "facesr.service.worker", "facesr.client"} <= expected
    assert expected == listed, f"missing: {sorted(expected - listed)}, stale: {sorted(listed - expected)}"


def test_the_base_install_is_the_api_without_torch() -> None:
    project = PYPROJECT["project"]
    base = {requirement.split(">")[0].split("=")[0].split("[")[0] for requirement in project["dependencies"]}
    assert "torch" not in base and "safetensors" not in base
    assert {"fastapi", "redis", "prometheus-client"} <= base
    extras = project["optional-dependencies"]
    assert any(requirement.startswith("torch") for requirement in extras["model"])
    assert "facesr[model]" in extras["train"]
