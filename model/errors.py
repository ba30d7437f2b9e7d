"""Errors raised by the model package (the service maps them to HTTP statuses in one place)."""

from __future__ import annotations


class FaceSRError(Exception):
    """Base class of every error the model package raises on purpose."""


class CheckpointError(FaceSRError):
    """A checkpoint file is missing, corrupt, not ours, or does not fit its configuration."""


class InputImageError(FaceSRError, ValueError):
    """An input image cannot be used (wrong dtype, shape or channel count)."""
