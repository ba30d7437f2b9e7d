"""The HTTP API of the service (FastAPI): see `create_app`."""

from facesr.service.api.app import create_app, create_app_from_environment

__all__ = ["create_app", "create_app_from_environment"]
