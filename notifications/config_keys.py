"""The ``[notifications]`` keys: how each is parsed, its default and the variables that set it.

Every key of the ``[notifications]`` TOML table, with the environment variable
that overrides it (a set, non-empty variable wins over the file) and its default:

- ``enabled`` (SKYGUARD_NOTIFY_ENABLED, true): master switch.
- ``channels`` (SKYGUARD_NOTIFY_CHANNELS, all): which of discord, slack, github, wandb may send.
- ``deadline`` (SKYGUARD_NOTIFY_DEADLINE, 20s): total time for all channels together.
- ``tries`` (SKYGUARD_NOTIFY_TRIES, 3): tries per channel, for transient errors only.
- ``connect_timeout`` (SKYGUARD_NOTIFY_CONNECT_TIMEOUT, 3.05s): HTTP connect timeout per try.
- ``read_timeout`` (SKYGUARD_NOTIFY_READ_TIMEOUT, 10s): HTTP read timeout per try.
- ``dashboard_url`` (SKYGUARD_DASHBOARD_URL, none): link template with ``{job_id}``,
  ``{task_id}``, ``{job_name}``.
- ``discord_username`` (SKYGUARD_DISCORD_USERNAME, skyguard): name the webhook posts as.
- ``discord_thread_id`` (SKYGUARD_DISCORD_THREAD_ID, none): post into this thread
  (a forum channel's webhook needs one).
- ``github_repo`` (SKYGUARD_GITHUB_REPO, then GITHUB_REPOSITORY): ``owner/name``.
- ``github_api_url`` (SKYGUARD_GITHUB_API_URL, https://api.github.com): GitHub Enterprise.
- ``github_context`` (SKYGUARD_GITHUB_CONTEXT, ``skyguard/<job name>``): status context.
- ``wandb_alerts`` (SKYGUARD_WANDB_ALERTS, true): ``wandb.alert`` on retries and failures.

Secrets come from the environment only (SkyPilot ``secrets:``), never the file:
:data:`SECRET_KEYS` names the variable for each one people may try to write there.
Every parser raises :class:`ConfigError` with one line naming the key or variable.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from devops.skypilot.common.credentials import DISCORD_WEBHOOK_VAR, SLACK_WEBHOOK_VAR
from notifications.channels.github import CONTEXT_LIMIT, DEFAULT_API_URL
from notifications.http import HttpTimeouts, is_http_url
from notifications.orchestrator import DEFAULT_DEADLINE, RetrySettings

CHANNELS = ("discord", "slack", "github", "wandb")


class ConfigError(ValueError):
    """A bad notification setting; the message is one line and never holds a secret."""


# --- value parsers: (where, raw value) -> value, raising ConfigError -----------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*$")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}
#: Notification waits are seconds to minutes; a day is already far too long.
_MAX_SECONDS = 86400.0
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _duration(where: str, value: object) -> float:
    """``90``, ``90s``, ``15m``, ``2h`` -> seconds (> 0)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(2) or ""]
    else:
        raise ConfigError(f"{where}: expected a duration like 20, 20s, 5m or 1h, got {value!r}")
    # TOML has nan and inf; neither bounds a wait (a NaN deadline never passes).
    if not math.isfinite(seconds) or seconds > _MAX_SECONDS:
        raise ConfigError(f"{where}: expected a finite duration of at most a day, got {value!r}")
    if seconds <= 0:
        raise ConfigError(f"{where}: must be more than 0, got {value!r}")
    return seconds


def _boolean(where: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigError(f"{where}: expected true or false, got {value!r}")


def _tries(where: str, value: object) -> int:
    try:
        tries = int(value) if isinstance(value, int | str) and not isinstance(value, bool) else 0
    except ValueError:
        tries = 0
    if tries < 1:
        raise ConfigError(f"{where}: expected a whole number >= 1, got {value!r}")
    return tries


def _text(where: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value.strip()


def _channels(where: str, value: object) -> frozenset[str]:
    if isinstance(value, str):
        names = [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        names = [v.strip() for v in value]
    else:
        raise ConfigError(f"{where}: expected a list of channel names, got {value!r}")
    unknown = sorted(set(names) - set(CHANNELS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown channel {', '.join(unknown)} (known: {', '.join(CHANNELS)})"
        )
    return frozenset(names)


def _repo(where: str, value: object) -> str:
    text = _text(where, value)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", text):
        raise ConfigError(f"{where}: expected owner/name, got {text!r}")
    return text


def url_value(where: str, value: object) -> str:
    text = _text(where, value)
    if not is_http_url(text):
        raise ConfigError(f"{where}: expected an http(s) URL, got {text!r}")
    return text


def _username(where: str, value: object) -> str:
    text = _text(where, value)
    # Discord refuses webhook names that are empty, longer than 80 or contain these.
    if not 1 <= len(text) <= 80 or any(w in text.lower() for w in ("discord", "clyde")):
        raise ConfigError(
            f"{where}: Discord refuses the name {text!r} (1-80 characters, "
            "without 'discord' or 'clyde')"
        )
    return text


def _context(where: str, value: object) -> str:
    text = _text(where, value)
    if len(text) > CONTEXT_LIMIT:
        # GitHub refuses a longer context (422): the status would never appear.
        raise ConfigError(f"{where}: at most {CONTEXT_LIMIT} characters, got {len(text)}")
    return text


def _snowflake(where: str, value: object) -> str:
    text = _text(
        where, str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    )
    # Discord ids are 64-bit integers written in decimal.
    if not re.fullmatch(r"[0-9]{1,20}", text):
        raise ConfigError(f"{where}: expected a Discord thread id (digits), got {text!r}")
    return text


_PLACEHOLDERS = {"job_id": "1", "task_id": "t", "job_name": "j"}


def _template(where: str, value: object) -> str:
    text = url_value(where, value)
    try:
        text.format(**_PLACEHOLDERS)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"{where}: bad placeholder {exc} (known: {{job_id}} {{task_id}} {{job_name}})"
        ) from None
    return text


@dataclass(frozen=True)
class Key:
    """One ``[notifications]`` key: its parser, default and overriding env variables."""

    parse: Callable[[str, object], Any]
    default: Any
    env: tuple[str, ...]


KEYS: Mapping[str, Key] = {
    "enabled": Key(_boolean, True, ("SKYGUARD_NOTIFY_ENABLED",)),
    "channels": Key(_channels, frozenset(CHANNELS), ("SKYGUARD_NOTIFY_CHANNELS",)),
    "deadline": Key(_duration, DEFAULT_DEADLINE, ("SKYGUARD_NOTIFY_DEADLINE",)),
    "tries": Key(_tries, RetrySettings().tries, ("SKYGUARD_NOTIFY_TRIES",)),
    "connect_timeout": Key(_duration, HttpTimeouts().connect, ("SKYGUARD_NOTIFY_CONNECT_TIMEOUT",)),
    "read_timeout": Key(_duration, HttpTimeouts().read, ("SKYGUARD_NOTIFY_READ_TIMEOUT",)),
    "dashboard_url": Key(_template, None, ("SKYGUARD_DASHBOARD_URL",)),
    "discord_username": Key(_username, "skyguard", ("SKYGUARD_DISCORD_USERNAME",)),
    "discord_thread_id": Key(_snowflake, None, ("SKYGUARD_DISCORD_THREAD_ID",)),
    "github_repo": Key(_repo, None, ("SKYGUARD_GITHUB_REPO", "GITHUB_REPOSITORY")),
    "github_api_url": Key(url_value, DEFAULT_API_URL, ("SKYGUARD_GITHUB_API_URL",)),
    "github_context": Key(_context, None, ("SKYGUARD_GITHUB_CONTEXT",)),
    "wandb_alerts": Key(_boolean, True, ("SKYGUARD_WANDB_ALERTS",)),
}

#: Keys people may try to put in the file; each secret has its env variable.
SECRET_KEYS: Mapping[str, str] = {
    "discord_webhook_url": DISCORD_WEBHOOK_VAR,
    "webhook_url": DISCORD_WEBHOOK_VAR,
    "slack_webhook_url": SLACK_WEBHOOK_VAR,
    "github_token": "GITHUB_TOKEN",
    "token": "GITHUB_TOKEN",
    "wandb_api_key": "WANDB_API_KEY",
}


def env_value(env: Mapping[str, str], *names: str) -> tuple[str, str] | None:
    """The first set, non-empty variable as (name, value)."""
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return name, value
    return None


def resolve(section: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    for name in section:
        if name in SECRET_KEYS:
            raise ConfigError(
                f"notifications.{name} is a secret: set {SECRET_KEYS[name]} "
                "(SkyPilot secrets:) instead of writing it in the config file"
            )
        if name not in KEYS:
            raise ConfigError(
                f"notifications.{name}: unknown key (known: {', '.join(sorted(KEYS))})"
            )
    values: dict[str, Any] = {}
    for name, key in KEYS.items():
        from_env = env_value(env, *key.env)
        if from_env is not None:
            values[name] = key.parse(from_env[0], from_env[1])
        elif name in section:
            values[name] = key.parse(f"notifications.{name}", section[name])
        else:
            values[name] = key.default
    return values
