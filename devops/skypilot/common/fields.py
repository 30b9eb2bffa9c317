"""Checked reading of the JSON records skyguard keeps (termination.json, attempt.json).

The state dir lives on a bucket that outlives machines, versions and hands: a file
there may hold anything. Every record is read through a table of its fields and
what each must be, so a wrong shape (``"duration": "5"``, ``"pid": 1e400``, a
``null`` entry) is one ``ValueError`` naming the field, never a ``TypeError`` deep
in the runner, and never a NaN carried into a budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Kind:
    """What a field must be: words for the error line, and the test."""

    what: str
    test: Callable[[Any], bool]


def _whole(value: Any) -> bool:
    # JSON true/false are ints to Python; they are not numbers here.
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return (_whole(value) or isinstance(value, float)) and math.isfinite(value)


TEXT = Kind("a string", lambda value: isinstance(value, str))
COUNT = Kind("a whole number >= 0", lambda value: _whole(value) and value >= 0)
ATTEMPT = Kind("a whole number >= 1", lambda value: _whole(value) and value >= 1)
EXIT_CODE = Kind("an exit code 0-255", lambda value: _whole(value) and 0 <= value <= 255)
SECONDS = Kind("a finite number of seconds >= 0", lambda value: _finite(value) and value >= 0)
OBJECT = Kind("a JSON object", lambda value: isinstance(value, Mapping))
#: Linux pids stay below 2**22; 0 means "not recorded".
PID = Kind("a pid", lambda value: _whole(value) and 0 <= value < 2**22)


def optional(kind: Kind) -> Kind:
    return Kind(f"{kind.what} or null", lambda value: value is None or kind.test(value))


def one_of(values: Iterable[str]) -> Kind:
    allowed = frozenset(values)
    return Kind(
        f"one of {', '.join(sorted(allowed))}",
        lambda value: isinstance(value, str) and value in allowed,
    )


def shown(value: Any) -> str:
    """A value for a one-line message: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def checked(
    data: Any, required: Mapping[str, Kind], extra: Mapping[str, Kind] | None = None
) -> dict[str, Any]:
    """The ``required`` fields of ``data`` (and those of ``extra`` it has), each
    checked; unknown keys are ignored. Raises ValueError naming the first bad field."""
    if not isinstance(data, Mapping):
        raise ValueError(f"expected a JSON object, got {shown(data)}")
    missing = sorted(set(required) - set(data))
    if missing:
        raise ValueError(f"missing fields: {', '.join(missing)}")
    fields = {**required, **{name: kind for name, kind in (extra or {}).items() if name in data}}
    for name, kind in fields.items():
        if not kind.test(data[name]):
            raise ValueError(f"{name}: expected {kind.what}, got {shown(data[name])}")
    return {name: data[name] for name in fields}
