"""Notification settings: one frozen object built from ``[notifications]`` and the environment.

Every key of the ``[notifications]`` TOML table, with the environment variable
that overrides it (a set, non-empty variable wins over the file) and its default:

- ``enabled`` (SKYGUARD_NOTIFY_ENABLED, true): master switch.
- ``channels`` (SKYGUARD_NOTIFY_CHANNELS, all): which of discord, github, wandb may send.
- ``deadline`` (SKYGUARD_NOTIFY_DEADLINE, 20s): total time for all channels together.
- ``tries`` (SKYGUARD_NOTIFY_TRIES, 3): tries per channel, for transient errors only.
- ``connect_timeout`` (SKYGUARD_NOTIFY_CONNECT_TIMEOUT, 3.05s): HTTP connect timeout per try.
- ``read_timeout`` (SKYGUARD_NOTIFY_READ_TIMEOUT, 10s): HTTP read timeout per try.
- ``dashboard_url`` (SKYGUARD_DASHBOARD_URL, none): link template with ``{job_id}``,
  ``{task_id}``, ``{job_name}``.
- ``discord_username`` (SKYGUARD_DISCORD_USERNAME, skyguard): name the webhook posts as.
- ``github_repo`` (SKYGUARD_GITHUB_REPO, then GITHUB_REPOSITORY): ``owner/name``.
- ``github_api_url`` (SKYGUARD_GITHUB_API_URL, https://api.github.com): GitHub Enterprise.
- ``github_context`` (SKYGUARD_GITHUB_CONTEXT, ``skyguard/<job name>``): status context.
- ``wandb_alerts`` (SKYGUARD_WANDB_ALERTS, true): ``wandb.alert`` on retries and failures.

Secrets come from the environment only (SkyPilot ``secrets:``), never the file:
``SKYGUARD_DISCORD_WEBHOOK_URL``, ``SKYGUARD_GITHUB_TOKEN`` / ``GITHUB_TOKEN``.
Also from the environment: ``SKYGUARD_GIT_COMMIT`` (else ``GITHUB_SHA``), W&B's
own ``WANDB_RUN_ID``, ``WANDB_PROJECT``, ``WANDB_ENTITY``, ``WANDB_MODE``,
``WANDB_DIR``, ``WANDB_BASE_URL``, and SkyPilot's ``SKYPILOT_MANAGED_JOB_ID`` /
``SKYPILOT_CLUSTER_INFO`` for the log command.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from devops.skypilot.common.credentials import DISCORD_WEBHOOK_VAR, GITHUB_TOKEN_VAR
from notifications.channels.discord import DiscordNotifier, DiscordSettings
from notifications.channels.github import (
    CONTEXT_LIMIT,
    DEFAULT_API_URL,
    GitHubNotifier,
    GitHubSettings,
)
from notifications.channels.wandb import MODES, WandbNotifier, WandbSettings
from notifications.http import HttpTimeouts, is_http_url
from notifications.notifier import Links, Notifier
from notifications.orchestrator import DEFAULT_DEADLINE, Orchestrator, RetrySettings
from notifications.secrets import Secret

CHANNELS = ("discord", "github", "wandb")


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


def _url(where: str, value: object) -> str:
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


_PLACEHOLDERS = {"job_id": "1", "task_id": "t", "job_name": "j"}


def _template(where: str, value: object) -> str:
    text = _url(where, value)
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
    "github_repo": Key(_repo, None, ("SKYGUARD_GITHUB_REPO", "GITHUB_REPOSITORY")),
    "github_api_url": Key(_url, DEFAULT_API_URL, ("SKYGUARD_GITHUB_API_URL",)),
    "github_context": Key(_context, None, ("SKYGUARD_GITHUB_CONTEXT",)),
    "wandb_alerts": Key(_boolean, True, ("SKYGUARD_WANDB_ALERTS",)),
}

#: Keys people may try to put in the file; each secret has its env variable.
SECRET_KEYS: Mapping[str, str] = {
    "discord_webhook_url": DISCORD_WEBHOOK_VAR,
    "webhook_url": DISCORD_WEBHOOK_VAR,
    "github_token": "GITHUB_TOKEN",
    "token": "GITHUB_TOKEN",
    "wandb_api_key": "WANDB_API_KEY",
}


def _env(env: Mapping[str, str], *names: str) -> tuple[str, str] | None:
    """The first set, non-empty variable as (name, value)."""
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return name, value
    return None


def _resolve(section: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
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
        from_env = _env(env, *key.env)
        if from_env is not None:
            values[name] = key.parse(from_env[0], from_env[1])
        elif name in section:
            values[name] = key.parse(f"notifications.{name}", section[name])
        else:
            values[name] = key.default
    return values


def _value(env: Mapping[str, str], *names: str) -> str | None:
    found = _env(env, *names)
    return None if found is None else found[1]


def _secret(env: Mapping[str, str], *names: str) -> Secret | None:
    value = _value(env, *names)
    return None if value is None else Secret(value)


def _commit(env: Mapping[str, str]) -> str | None:
    found = _env(env, "SKYGUARD_GIT_COMMIT", "GITHUB_SHA")
    if found is None:
        return None
    name, value = found
    if not re.fullmatch(r"[0-9a-fA-F]{7,64}", value):
        raise ConfigError(f"{name}: expected a hex commit id, got {value!r}")
    return value.lower()


def _cluster_name(env: Mapping[str, str]) -> str | None:
    raw = env.get("SKYPILOT_CLUSTER_INFO")
    if not raw:
        return None
    try:
        name = json.loads(raw).get("cluster_name")
    except (ValueError, AttributeError):
        return None
    return name if isinstance(name, str) and name else None


def _wandb(env: Mapping[str, str], alerts: bool) -> WandbSettings:
    directory = _value(env, "WANDB_DIR")
    base_url = _value(env, "WANDB_BASE_URL")
    if base_url is not None:
        # It becomes the run link in every message and the commit status' target_url.
        base_url = _url("WANDB_BASE_URL", base_url)
    mode = _value(env, "WANDB_MODE")
    if mode is not None and mode not in MODES:
        raise ConfigError(f"WANDB_MODE: expected one of {', '.join(MODES)}, got {mode!r}")
    return WandbSettings(
        run_id=_value(env, "WANDB_RUN_ID"),
        project=_value(env, "WANDB_PROJECT"),
        entity=_value(env, "WANDB_ENTITY"),
        mode=mode,
        directory=Path(directory) if directory else None,
        base_url=base_url,
        api_key=_secret(env, "WANDB_API_KEY"),
        alerts=alerts,
    )


@dataclass(frozen=True)
class NotificationConfig:
    """Everything notifications need, read once. ``repr`` shows secrets as ``***``."""

    enabled: bool = True
    channels: frozenset[str] = frozenset(CHANNELS)
    deadline: float = DEFAULT_DEADLINE
    retry: RetrySettings = field(default_factory=RetrySettings)
    discord: DiscordSettings = field(default_factory=DiscordSettings)
    github: GitHubSettings = field(default_factory=GitHubSettings)
    wandb: WandbSettings = field(default_factory=WandbSettings)
    git_commit: str | None = None
    #: Template; see :meth:`links`.
    dashboard_url: str | None = None
    #: ``SKYPILOT_MANAGED_JOB_ID``: managed jobs' logs are ``sky jobs logs <id>``.
    managed_job_id: str | None = None
    cluster_name: str | None = None

    @classmethod
    def from_sources(
        cls, section: Mapping[str, Any] | None, env: Mapping[str, str]
    ) -> NotificationConfig:
        """Build from a ``[notifications]`` table (or None) and an environment.

        Raises :class:`ConfigError` with one line naming the bad key or variable.
        """
        if section is not None and not isinstance(section, Mapping):
            raise ConfigError("[notifications] must be a table")
        values = _resolve(section or {}, env)
        timeouts = HttpTimeouts(values["connect_timeout"], values["read_timeout"])
        webhook = _secret(env, DISCORD_WEBHOOK_VAR)
        if webhook is not None and not is_http_url(webhook.reveal()):
            # The value is a secret: name the variable, never quote it.
            raise ConfigError(f"{DISCORD_WEBHOOK_VAR}: expected an http(s) URL")
        return cls(
            enabled=values["enabled"],
            channels=values["channels"],
            deadline=values["deadline"],
            retry=RetrySettings(tries=values["tries"]),
            discord=DiscordSettings(webhook, values["discord_username"], timeouts),
            github=GitHubSettings(
                token=_secret(env, GITHUB_TOKEN_VAR, "GITHUB_TOKEN"),
                repo=values["github_repo"],
                api_url=values["github_api_url"],
                context=values["github_context"] or None,
                timeouts=timeouts,
            ),
            wandb=_wandb(env, values["wandb_alerts"]),
            git_commit=_commit(env),
            dashboard_url=values["dashboard_url"],
            managed_job_id=_value(env, "SKYPILOT_MANAGED_JOB_ID"),
            cluster_name=_cluster_name(env),
        )

    def notifiers(self) -> list[Notifier]:
        """One notifier per channel listed in ``channels`` (each may still lack credentials)."""
        if not self.enabled:
            return []
        built: dict[str, Notifier] = {
            "discord": DiscordNotifier(self.discord),
            "github": GitHubNotifier(self.github),
            "wandb": WandbNotifier(self.wandb),
        }
        return [built[name] for name in CHANNELS if name in self.channels]

    def orchestrator(self, sleep: Callable[[float], None] = time.sleep) -> Orchestrator:
        return Orchestrator(self.notifiers(), deadline=self.deadline, retry=self.retry, sleep=sleep)

    def links(self, job_name: str, task_id: str) -> Links:
        if self.managed_job_id:
            log_command: str | None = f"sky jobs logs {self.managed_job_id}"
        elif self.cluster_name:
            log_command = f"sky logs {self.cluster_name}"
        else:
            log_command = None
        dashboard = None
        if self.dashboard_url and (self.managed_job_id or "{job_id}" not in self.dashboard_url):
            # Values are URL-encoded: a job name with a space, '&' or '#' must not
            # break the link (GitHub refuses a target_url that is not a URI).
            dashboard = self.dashboard_url.format(
                job_id=quote(self.managed_job_id or "", safe=""),
                task_id=quote(task_id, safe=""),
                job_name=quote(job_name, safe=""),
            )
        return Links(
            log_command=log_command,
            dashboard_url=dashboard,
            wandb_url=self.wandb.run_url(),
            git_commit=self.git_commit,
        )

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary for ``--dry-run``: secrets show as ``***`` or null."""

        def shown(secret: Secret | None) -> str | None:
            return None if secret is None else "***"

        return {
            "enabled": self.enabled,
            "channels": sorted(self.channels),
            "deadline": self.deadline,
            "tries": self.retry.tries,
            "connect_timeout": self.discord.timeouts.connect,
            "read_timeout": self.discord.timeouts.read,
            "dashboard_url": self.dashboard_url,
            "git_commit": self.git_commit,
            "discord": {
                "webhook_url": shown(self.discord.webhook_url),
                "username": self.discord.username,
            },
            "github": {
                "token": shown(self.github.token),
                "repo": self.github.repo,
                "api_url": self.github.api_url,
                "context": self.github.context,
            },
            "wandb": {
                "run_id": self.wandb.run_id,
                "project": self.wandb.project,
                "entity": self.wandb.entity,
                "mode": self.wandb.mode,
                "alerts": self.wandb.alerts,
            },
        }
