"""Singular JSONPath queries (RFC 9535): ``$``, then ``.name``, ``['name']`` or ``[index]``
steps, each selecting at most one value; enough to say where a field is, with no
filters or wildcards to evaluate."""

from __future__ import annotations

import re
from typing import Any

_STEP = re.compile(r"\.([A-Za-z_][\w-]*)|\[(-?\d+)\]|\['((?:[^'\\]|\\.)*)'\]")
_MISSING = object()


class JsonPathError(ValueError):
    pass


def parse(path: str) -> list[str | int]:
    """The steps of ``path``; JsonPathError when it is not a singular query."""
    if not path.startswith("$"):
        raise JsonPathError(f"{path!r}: a JSONPath starts with '$' (e.g. '$.data.text')")
    steps: list[str | int] = []
    position = 1
    while position < len(path):
        found = _STEP.match(path, position)
        if found is None:
            raise JsonPathError(
                f"{path!r}: cannot read it from position {position}; use .name, ['name'] "
                "or [index] steps"
            )
        name, index, quoted = found.groups()
        steps.append(name if name is not None else int(index) if index is not None else quoted)
        position = found.end()
    return steps


def select(document: Any, path: str) -> Any:
    """The value at ``path`` in ``document``, or None where nothing is there."""
    value: Any = document
    for step in parse(path):
        if isinstance(step, int):
            if not isinstance(value, list) or not -len(value) <= step < len(value):
                return None
            value = value[step]
        else:
            if not isinstance(value, dict):
                return None
            value = value.get(step, _MISSING)
            if value is _MISSING:
                return None
    return value
