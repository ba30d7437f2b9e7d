"""The metrics a Python module defines with prometheus_client, read from its source without importing it.

Reading the syntax tree (not importing) keeps the check free of the module's dependencies and of
prometheus_client's multiprocess side effects, and sees every metric whether or not it was ever observed.
A metric whose name is not a literal (or a module-level string constant) is reported, not skipped, so a
dashboard cannot silently go unchecked.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

# Constructor -> suffixes of the samples prometheus_client exposes for it ("" = the name itself).
_SAMPLE_SUFFIXES = {
    "Counter": ("_total", "_created"),
    "Gauge": ("",),
    "Histogram": ("_bucket", "_sum", "_count", "_created"),
    "Summary": ("_sum", "_count", "_created"),
    "Info": ("_info",),
    "Enum": ("",),
}
# Labels a kind adds to some of its samples by itself.
_IMPLICIT_LABELS = {"Histogram": ("le",), "Summary": ("quantile",)}


class MetricSourceError(ValueError):
    """The module defines a metric this reader cannot resolve statically."""


@dataclass(frozen=True)
class MetricDefinition:
    """One metric as defined in code.

    Attributes:
        name: the family name as exposed (a counter's ``_total`` removed, namespace and unit applied).
        kind: the prometheus_client class name: Counter, Gauge, Histogram, Summary, Info or Enum.
        labels: label names given at definition, plus those the kind adds itself (``le`` for histograms).
        line: where it is defined, for error messages.
    """

    name: str
    kind: str
    labels: frozenset[str]
    line: int

    @property
    def sample_names(self) -> frozenset[str]:
        """Every series name a scrape can show for this metric."""
        return frozenset(self.name + suffix for suffix in _SAMPLE_SUFFIXES[self.kind])


def _string_constants(tree: ast.Module) -> dict[str, str]:
    """Module-level ``NAME = "literal"`` assignments."""
    constants = {}
    for node in tree.body:
        value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
        if not (isinstance(value, ast.Constant) and isinstance(value.value, str)):
            continue
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        for target in targets:
            if isinstance(target, ast.Name):
                constants[target.id] = value.value
    return constants


def _resolve_string(node: ast.expr, constants: dict[str, str], what: str, line: int) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name) and node.id in constants:
        return constants[node.id]
    raise MetricSourceError(f"line {line}: the metric's {what} is not a string literal or module constant")


def _resolve_labels(node: ast.expr, constants: dict[str, str], line: int) -> list[str]:
    if not isinstance(node, ast.List | ast.Tuple):
        raise MetricSourceError(f"line {line}: label names must be a literal list or tuple")
    return [_resolve_string(element, constants, "label name", line) for element in node.elts]


@dataclass(frozen=True)
class _ClientImports:
    """How the module refers to prometheus_client: imported classes (local name -> kind), module aliases."""

    classes: dict[str, str]
    modules: frozenset[str]

    @classmethod
    def of(cls, tree: ast.Module) -> _ClientImports:
        classes, modules = {}, set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("prometheus_client"):
                for alias in node.names:
                    if alias.name in _SAMPLE_SUFFIXES:
                        classes[alias.asname or alias.name] = alias.name
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("prometheus_client"):
                        modules.add(alias.asname or alias.name)
        return cls(classes=classes, modules=frozenset(modules))

    def kind_of(self, call: ast.Call) -> str | None:
        """The metric kind a call constructs, or None when it is not a prometheus_client metric."""
        func = call.func
        if isinstance(func, ast.Name):
            return self.classes.get(func.id)
        if isinstance(func, ast.Attribute) and func.attr in _SAMPLE_SUFFIXES:
            return func.attr if ast.unparse(func.value) in self.modules else None
        return None


def _definition(call: ast.Call, kind: str, constants: dict[str, str]) -> MetricDefinition:
    line = call.lineno
    keywords = {keyword.arg: keyword.value for keyword in call.keywords if keyword.arg}
    name_node = call.args[0] if call.args else keywords.get("name")
    if name_node is None:
        raise MetricSourceError(f"line {line}: {kind}(...) without a name")
    name = _resolve_string(name_node, constants, "name", line)
    parts = [
        _resolve_string(keywords[part], constants, part, line)
        for part in ("namespace", "subsystem")
        if part in keywords
    ]
    name = "_".join([*(part for part in parts if part), name])
    if "unit" in keywords:
        unit = _resolve_string(keywords["unit"], constants, "unit", line)
        if unit and not name.endswith("_" + unit):
            name = f"{name}_{unit}"
    if kind == "Counter":
        name = name.removesuffix("_total")
    label_node = call.args[2] if len(call.args) > 2 else keywords.get("labelnames")
    labels = _resolve_labels(label_node, constants, line) if label_node is not None else []
    if kind == "Enum":
        labels.append(name)
    labels.extend(_IMPLICIT_LABELS.get(kind, ()))
    return MetricDefinition(name=name, kind=kind, labels=frozenset(labels), line=line)


def read_metric_definitions(path: Path) -> dict[str, MetricDefinition]:
    """Every prometheus_client metric constructed in the module at ``path``, by family name.

    Raises:
        MetricSourceError: a name or label list that is not static, or one family name defined twice.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    constants = _string_constants(tree)
    client = _ClientImports.of(tree)
    definitions: dict[str, MetricDefinition] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or (kind := client.kind_of(node)) is None:
            continue
        definition = _definition(node, kind, constants)
        if definition.name in definitions:
            raise MetricSourceError(
                f"line {definition.line}: metric {definition.name} is already defined on line "
                f"{definitions[definition.name].line}"
            )
        definitions[definition.name] = definition
    return definitions


def series_index(definitions: dict[str, MetricDefinition]) -> dict[str, MetricDefinition]:
    """Exposed series name (``x_total``, ``h_bucket``, ...) -> the metric it belongs to."""
    return {sample: definition for definition in definitions.values() for sample in definition.sample_names}
