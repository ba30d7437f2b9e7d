"""Fixtures of the deployment checks."""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.deploy import sources


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    """The services of docker-compose.yml (YAML merge keys resolved)."""
    return sources.compose()["services"]


@pytest.fixture
def no_facesr_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide the caller's FACESR_* variables, so that settings are judged on the deployment's values only."""
    for name in [name for name in os.environ if name.startswith("FACESR_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def service_settings() -> None:
    """The service's settings module must import (the deployment's variables are checked against it)."""
    import facesr.service.settings  # noqa: F401
