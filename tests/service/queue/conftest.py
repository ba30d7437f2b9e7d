"""Fixtures of the queue tests: a tiny model and a fresh key prefix per test."""

from __future__ import annotations

import uuid

import pytest

from facesr.model.config import DICConfig
from facesr.model.inference import FaceSR

MODEL = "tiny"


@pytest.fixture(scope="module")
def engine() -> FaceSR:
    return FaceSR.from_config(DICConfig.tiny(), name=MODEL)


@pytest.fixture
def prefix() -> str:
    """A key prefix of its own, so tests sharing one redis-server never see each other's keys."""
    return f"t{uuid.uuid4().hex[:10]}"
