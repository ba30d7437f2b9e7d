"""Fixtures for the training tests: the tiny test config on a synthetic face folder."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from facesr.train.config import TrainConfig, parse_config
from tests.model.train.helpers import write_face_folder

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs"


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Deep merge of nested dicts (overrides win)."""
    result = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


@pytest.fixture(scope="session")
def faces_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 10-face synthetic training folder shared by the session."""
    root = tmp_path_factory.mktemp("faces") / "faces"
    write_face_folder(root, count=10)
    return root


@pytest.fixture
def tiny_config_data(faces_dir: Path) -> dict[str, Any]:
    """configs/tiny-test.yaml as a dict, pointed at the synthetic folder."""
    data = yaml.safe_load((CONFIG_DIR / "tiny-test.yaml").read_text(encoding="utf-8"))
    data["data"]["root"] = str(faces_dir)
    data["data"]["val_count"] = 2
    return data


@pytest.fixture
def make_config(tiny_config_data: dict[str, Any]) -> Callable[..., TrainConfig]:
    """Build the tiny config with nested overrides: make_config({"train": {"iterations": 2}})."""

    def build(overrides: dict[str, Any] | None = None) -> TrainConfig:
        return parse_config(merged(tiny_config_data, overrides or {}))

    return build
