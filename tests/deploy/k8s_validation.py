"""Schema validation of the Kubernetes manifests, offline.

Built-in kinds are checked against the Kubernetes OpenAPI schemas that the `kubernetes-validate` package
ships (strict: unknown fields are errors), for the oldest and the newest Kubernetes version we support.
KEDA's ScaledObject is a custom resource those schemas do not know; it is checked against our own schema
(schemas/keda-scaledobject.schema.json). A kind that neither covers is an error, never a silent pass.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

from tests.deploy.sources import KEDA_SCHEMA

# Oldest and newest Kubernetes minor versions the manifests must be valid for.
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
CUSTOM_SCHEMAS = {("keda.sh/v1alpha1", "ScaledObject"): KEDA_SCHEMA}


@cache
def _validator(schema_path: Path) -> jsonschema.protocols.Validator:
    schema = json.loads(schema_path.read_text(encoding="utf-8"))
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


def schema_errors(document: dict[str, Any], schema_path: Path) -> list[str]:
    """Violations of the JSON schema at ``schema_path``, one line each (empty: valid)."""
    errors = sorted(
        _validator(schema_path).iter_errors(document), key=lambda error: list(error.absolute_path)
    )
    return [f"{'/'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}" for error in errors]


def keda_errors(document: dict[str, Any]) -> list[str]:
    """Violations of our KEDA ScaledObject schema (empty: valid)."""
    return schema_errors(document, KEDA_SCHEMA)


def _describe(document: dict[str, Any]) -> str:
    return f"{document.get('kind', '?')}/{document.get('metadata', {}).get('name', '?')}"


def validation_errors(
    documents: Iterable[dict[str, Any]], versions: Iterable[str] = KUBERNETES_VERSIONS
) -> list[str]:
    """Every problem found in ``documents``, as readable lines; an empty list means all are valid."""
    import kubernetes_validate.utils as kv  # only in the check tools' environment (scripts/check-deploy.sh)

    problems = []
    for document in documents:
        name = _describe(document)
        if not isinstance(document.get("apiVersion"), str) or not isinstance(document.get("kind"), str):
            problems.append(f"{name}: apiVersion and kind must be strings")
            continue
        schema_path = CUSTOM_SCHEMAS.get((document["apiVersion"], document["kind"]))
        if schema_path is not None:
            problems.extend(f"{name}: {line}" for line in schema_errors(document, schema_path))
            continue
        for version in versions:
            try:
                kv.validate(document, version, strict=True)
            except kv.SchemaNotFoundError as error:
                problems.append(f"{name}: {error.message} (and no custom schema for it)")
            except kv.ValidationError as error:
                path = "/".join(map(str, error.absolute_path)) or "(root)"
                problems.append(f"{name} (Kubernetes {error.version}): {path}: {error.message}")
    return problems
