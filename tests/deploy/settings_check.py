"""Cross-checks of the deployment's FACESR_* variables against the service's settings class."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_COMPOSE_DEFAULT = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def resolve_compose_defaults(value: object) -> str:
    """A compose environment value as it is when no variable is set: ``${X:-fp32}`` -> ``fp32``."""
    return _COMPOSE_DEFAULT.sub(lambda match: match.group(2) or "", str(value))


def facesr_variables(environment: Mapping[str, Any]) -> dict[str, str]:
    """The FACESR_* entries of an environment, values as strings with compose defaults applied."""
    return {
        name: resolve_compose_defaults(value)
        for name, value in environment.items()
        if name.startswith("FACESR_")
    }


def settings_errors(variables: Mapping[str, str]) -> list[str]:
    """Why the service would refuse these variables at start-up: unknown names or invalid values.

    Imports ``facesr.service.settings`` (callers skip when it is absent). The values are given to the
    settings class as its own fields, so the process environment cannot mask or fill them.
    """
    from pydantic import ValidationError

    from facesr.service.settings import ENV_PREFIX, ServiceSettings, settings_error_message

    fields = {name.removeprefix(ENV_PREFIX).lower(): value for name, value in variables.items()}
    unknown = sorted(ENV_PREFIX + name.upper() for name in fields if name not in ServiceSettings.model_fields)
    if unknown:
        return [f"{name} is not a setting of facesr.service.settings.ServiceSettings" for name in unknown]
    try:
        ServiceSettings(**fields)
    except ValidationError as error:
        return settings_error_message(error).splitlines()[1:]
    return []
