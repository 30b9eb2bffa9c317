"""Values a user types (durations, counts, switches, ports, rates), parsed into one
``ConfigError`` line each; shared by the runner's options and ``skyguard launch``."""

from __future__ import annotations

import re


class ConfigError(Exception):
    """Bad configuration: the message is one line naming the problem."""


_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_UNIT_SECONDS = {None: 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str | float | int) -> float:
    """``90``, ``90s``, ``15m``, ``2h``, ``1.5h`` -> seconds. Negative or garbage raises."""
    if isinstance(text, bool):
        raise ConfigError(f"not a duration: {text!r}")
    if isinstance(text, (int, float)):
        if text < 0:
            raise ConfigError(f"duration must not be negative: {text}")
        return float(text)
    match = _DURATION.match(text)
    if match is None:
        raise ConfigError(f"not a duration: {text!r} (use e.g. 90, 90s, 15m, 2h)")
    if match.group(1).startswith("-"):
        raise ConfigError(f"duration must not be negative: {text.strip()}")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def parse_count(text: str | int) -> int:
    if isinstance(text, bool):
        raise ConfigError(f"not a whole number: {text!r}")
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise ConfigError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise ConfigError(f"must not be negative: {value}")
    return value


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


def parse_switch(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise ConfigError(f"not a yes/no value: {value!r}")


def parse_port(text: str | int) -> int:
    port = parse_count(text)
    if not 0 < port < 65536:
        raise ConfigError(f"not a port number: {port}")
    return port


def parse_rate(text: str | float) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ConfigError(f"not a number: {text!r}") from None
    if value < 0:
        raise ConfigError(f"must not be negative: {value:g}")
    return value
