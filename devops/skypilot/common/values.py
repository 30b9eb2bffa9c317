"""Values a user types (durations, counts, switches, ports, rates), parsed into one
``ConfigError`` line each; shared by the runner's options and ``skyguard launch``.

A TOML file can hold ``nan`` and ``inf`` as floats, and ``float()`` accepts them as
text: neither is a duration or a number of anything. A NaN compares false with every
deadline (a stop loop that never reaches SIGKILL), so every parser here refuses
non-finite values, and bounds durations to what a timer can hold.
"""

from __future__ import annotations

import math
import re


class ConfigError(Exception):
    """Bad configuration: the message is one line naming the problem."""


_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_UNIT_SECONDS = {None: 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
#: Ten years. Longer is a typo, and far beyond it ``select()`` and ``sleep()``
#: overflow the platform's time type.
MAX_DURATION = 10 * 365 * 86400.0


def _finite(value: float, text: object) -> float:
    if not math.isfinite(value):
        raise ConfigError(f"not a finite number: {text!r}")
    return value


def parse_duration(text: str | float | int) -> float:
    """``90``, ``90s``, ``15m``, ``2h``, ``1.5h`` -> seconds. Negative, non-finite,
    longer than :data:`MAX_DURATION` or garbage raises."""
    if isinstance(text, bool):
        raise ConfigError(f"not a duration: {text!r}")
    if isinstance(text, (int, float)):
        seconds = _finite(float(text), text)
        if seconds < 0:
            raise ConfigError(f"duration must not be negative: {text}")
    elif isinstance(text, str) and (match := _DURATION.match(text)) is not None:
        if match.group(1).startswith("-"):
            raise ConfigError(f"duration must not be negative: {text.strip()}")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise ConfigError(f"not a duration: {text!r} (use e.g. 90, 90s, 15m, 2h)")
    if seconds > MAX_DURATION:
        raise ConfigError(f"duration too long: {text!r} (at most 10 years)")
    return seconds


def parse_count(text: str | int | float) -> int:
    """A whole number >= 0: ``3``, ``"3"``, or a TOML float with no fraction (``3.0``)."""
    if isinstance(text, bool):
        raise ConfigError(f"not a whole number: {text!r}")
    if isinstance(text, float):
        if not (math.isfinite(text) and text.is_integer()):
            raise ConfigError(f"not a whole number: {text!r}")
        text = int(text)
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
    """A finite number >= 0 (a bandwidth, a rate)."""
    if isinstance(text, bool):
        raise ConfigError(f"not a number: {text!r}")
    try:
        value = _finite(float(text), text)
    except (TypeError, ValueError):
        raise ConfigError(f"not a number: {text!r}") from None
    if value < 0:
        raise ConfigError(f"must not be negative: {value:g}")
    return value
