"""Notification settings: one frozen object built from ``[notifications]`` and the environment.

The keys of the ``[notifications]`` table and the variables that override them are
listed in :mod:`notifications.config_keys`. Secrets come from the environment only
(SkyPilot ``secrets:``), never the file: ``SKYGUARD_DISCORD_WEBHOOK_URL``,
``SKYGUARD_SLACK_WEBHOOK_URL``, ``SKYGUARD_GITHUB_TOKEN`` / ``GITHUB_TOKEN``.
Also from the environment: ``SKYGUARD_GIT_COMMIT`` (else ``GITHUB_SHA``), W&B's
own ``WANDB_RUN_ID``, ``WANDB_PROJECT``, ``WANDB_ENTITY``, ``WANDB_MODE``,
``WANDB_DIR``, ``WANDB_BASE_URL``, and SkyPilot's ``SKYPILOT_MANAGED_JOB_ID`` /
``SKYPILOT_CLUSTER_INFO`` for the log command.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from devops.skypilot.common.credentials import (
    DISCORD_WEBHOOK_VAR,
    GITHUB_TOKEN_VAR,
    SLACK_WEBHOOK_VAR,
)
from notifications.channels.discord import DiscordNotifier, DiscordSettings
from notifications.channels.github import (
    GitHubNotifier,
    GitHubSettings,
)
from notifications.channels.slack import SlackNotifier, SlackSettings
from notifications.channels.wandb import MODES, WandbNotifier, WandbSettings
from notifications.config_keys import CHANNELS, ConfigError, env_value, resolve, url_value
from notifications.http import HttpTimeouts, is_http_url
from notifications.notifier import Links, Notifier
from notifications.orchestrator import DEFAULT_DEADLINE, Orchestrator, RetrySettings
from notifications.secrets import Secret

__all__ = ["CHANNELS", "ConfigError", "NotificationConfig"]


def _value(env: Mapping[str, str], *names: str) -> str | None:
    found = env_value(env, *names)
    return None if found is None else found[1]


def _secret(env: Mapping[str, str], *names: str) -> Secret | None:
    value = _value(env, *names)
    return None if value is None else Secret(value)


def _webhook(env: Mapping[str, str], name: str) -> Secret | None:
    webhook = _secret(env, name)
    if webhook is not None and not is_http_url(webhook.reveal()):
        # The value is a secret: name the variable, never quote it.
        raise ConfigError(f"{name}: expected an http(s) URL")
    return webhook


def _commit(env: Mapping[str, str]) -> str | None:
    found = env_value(env, "SKYGUARD_GIT_COMMIT", "GITHUB_SHA")
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
        base_url = url_value("WANDB_BASE_URL", base_url)
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
    slack: SlackSettings = field(default_factory=SlackSettings)
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
        values = resolve(section or {}, env)
        timeouts = HttpTimeouts(values["connect_timeout"], values["read_timeout"])
        webhook = _webhook(env, DISCORD_WEBHOOK_VAR)
        return cls(
            enabled=values["enabled"],
            channels=values["channels"],
            deadline=values["deadline"],
            retry=RetrySettings(tries=values["tries"]),
            discord=DiscordSettings(
                webhook, values["discord_username"], timeouts, values["discord_thread_id"]
            ),
            slack=SlackSettings(_webhook(env, SLACK_WEBHOOK_VAR), timeouts),
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
            "slack": SlackNotifier(self.slack),
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
                "thread_id": self.discord.thread_id,
            },
            "slack": {"webhook_url": shown(self.slack.webhook_url)},
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
