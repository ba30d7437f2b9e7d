"""Just enough PromQL reading to cross-check queries against the service's metric definitions.

This is not a parser: syntax is checked by `promtool` (scripts/check-deploy.sh). These helpers pull out the
metric names a query selects and the label names its selectors match on, after string literals, label
lists and range durations have been blanked out so that none of them can be mistaken for a metric.
"""

from __future__ import annotations

import re

# Grafana's built-in interval variables, replaced by plain durations so Prometheus tools accept the query.
GRAFANA_INTERVAL_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1h",
}

# Words that look like identifiers but are operators, modifiers or literals.
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless"}
    | {"atan2", "inf", "nan", "start", "end"}
)
_GRAFANA_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
_STRING_LITERAL = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_BRACKETS = re.compile(r"\[[^\]]*\]")
_BRACES = re.compile(r"\{[^}]*\}")
_IDENTIFIER = re.compile(r"(?<![\w.:$])([A-Za-z_:][A-Za-z0-9_:]*)(?![\w:])")
_SELECTOR = re.compile(r"(?<![\w.:$])([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}")
# What follows a function or aggregation name: "(", or a grouping clause (its list blanked) and then "(".
_CALL_FOLLOWS = re.compile(r"\s*(?:(?:by|without)\s*\(\s*\)\s*)?\(")
_MATCHER_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")


def substitute_grafana_variables(expr: str) -> str:
    """Replace Grafana's interval variables by durations; any other dashboard variable is an error.

    Raises:
        ValueError: naming the variable, when the query uses one this check cannot stand in for.
    """

    def replace(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name not in GRAFANA_INTERVAL_VARIABLES:
            raise ValueError(f"unsupported Grafana variable ${name} in query: {expr!r}")
        return GRAFANA_INTERVAL_VARIABLES[name]

    return _GRAFANA_VARIABLE.sub(replace, expr)


def _blank_non_selectors(expr: str) -> str:
    """The query with string literals, label lists and [range] parts removed; selectors' braces kept."""
    text = _STRING_LITERAL.sub('""', expr)
    text = _LABEL_LIST.sub(r"\1 ()", text)
    return _BRACKETS.sub("", text)


def metric_names(expr: str) -> set[str]:
    """Names of the metrics a query selects, e.g. ``{"facesr_batches_total"}`` for
    ``sum(rate(facesr_batches_total[5m]))``. Function and aggregation names are not metrics (a parenthesis
    follows them, possibly after a ``by (...)`` clause), nor are keywords, numbers or durations."""
    text = _BRACES.sub("{}", _blank_non_selectors(expr))
    names = set()
    for match in _IDENTIFIER.finditer(text):
        word = match.group(1)
        if _CALL_FOLLOWS.match(text, match.end()) or word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


def selector_labels(expr: str) -> dict[str, set[str]]:
    """For each metric selected with label matchers, the label names matched on:
    ``x{route="/a", code=~"5.."}`` -> ``{"x": {"route", "code"}}``."""
    text = _STRING_LITERAL.sub('""', expr)
    labels: dict[str, set[str]] = {}
    for match in _SELECTOR.finditer(text):
        name, matchers = match.group(1), match.group(2)
        if name.lower() in _KEYWORDS:
            continue
        labels.setdefault(name, set()).update(_MATCHER_LABEL.findall(matchers))
    return labels
