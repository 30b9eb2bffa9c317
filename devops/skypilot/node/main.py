"""``skyguard run``: the composition root. Builds the config and what plugs into the runner.

The only module that imports notifications, the multi-node coordinator and the
NCCL preflight, so the runner (``runner.py``) depends on none of them; ``main``
exits with the code the runner decided, or on a multi-node job with the code of
the job's one decision (see ``CoordinationObserver.exit_code``).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from devops.skypilot.common.console import say
from devops.skypilot.common.lifecycle import RunObserver, left_to_controller
from devops.skypilot.common.termination import EXIT_CONFIG_ERROR, EXIT_SUCCESS, Verdict
from devops.skypilot.common.values import ConfigError
from devops.skypilot.node.config import RunConfig, add_run_arguments, build_config
from devops.skypilot.node.environment import (
    EnvironmentConfigError,
    SkyPilotEnv,
    from_env,
    nccl_env_defaults,
    torchrun_command,
)
from devops.skypilot.node.monitors.base import Monitor
from devops.skypilot.node.runner import Preflight, Runner, RunnerExtensions
from devops.skypilot.node.signals import SignalWaker
from devops.skypilot.node.state_checks import prepare_state_dir

#: Seconds the exit barrier waits beyond the grace: the stop's SIGKILL round and the reports.
BARRIER_MARGIN = 10.0


def skypilot_env(env: Mapping[str, str]) -> SkyPilotEnv:
    try:
        return from_env(env)
    except EnvironmentConfigError as error:
        raise ConfigError(str(error)) from None


def resolve_command(config: RunConfig, sky: SkyPilotEnv) -> RunConfig:
    """The config with the command actually started (``--torchrun`` expands here)."""
    if not config.torchrun:
        return config
    try:
        command = torchrun_command(
            sky,
            config.command,
            master_port=config.master_port,
            nproc_per_node=config.nproc_per_node,
            shutdown_timeout=config.grace,
        )
    except EnvironmentConfigError as error:
        raise ConfigError(str(error)) from None
    return replace(config, command=tuple(command))


def describe(config: RunConfig, env: Mapping[str, str]) -> dict[str, Any]:
    """``--dry-run`` output: the resolved settings, secrets shown as ``***``."""
    from notifications import ConfigError as NotifyConfigError
    from notifications import NotificationConfig

    try:
        notifications = NotificationConfig.from_sources(
            config.file_sections.get("notifications"), env
        )
    except NotifyConfigError as error:
        raise ConfigError(str(error)) from None
    return {**config.describe(), "notifications": notifications.describe()}


def build_extensions(config: RunConfig, sky: SkyPilotEnv) -> RunnerExtensions:
    """Observers, extra monitors, child env defaults and the preflight for one attempt.

    Binds the head node's coordination port, so a taken port fails before anything starts.
    """
    from devops.skypilot.node.coordination import coordination_from_env
    from devops.skypilot.node.coordination.protocol import CoordinationConfig, CoordinationError
    from notifications import ConfigError as NotifyConfigError
    from notifications import NotificationObserver

    observers: list[RunObserver] = []
    monitors: list[Monitor] = []
    try:
        coordination = coordination_from_env(
            sky,
            config.state_dir,
            config=CoordinationConfig(
                port=config.coord_port,
                unreachable_timeout=config.coord_timeout,
                # The exit barrier covers a worker's stop: its grace, and a margin.
                linger=config.grace + BARRIER_MARGIN,
            ),
        )
        notifier = NotificationObserver.from_sources(
            config.file_sections.get("notifications"), os.environ
        )
    except (CoordinationError, NotifyConfigError) as error:
        raise ConfigError(str(error)) from None
    if coordination is not None:
        observers.append(coordination[0])
        monitors.append(coordination[1])
    if coordination is None or coordination[0].is_head:
        # One decision for the job, told once: only the head node notifies.
        observers.append(notifier)
    return RunnerExtensions(
        observers=observers,
        monitors=monitors,
        env_defaults=nccl_env_defaults(
            os.environ, config.state_dir, config.heartbeat_timeout or None
        ),
        preflight=_preflight(config, sky) if config.preflight else None,
        left_to_controller=left_to_controller(os.environ),
    )


def job_exit_code(extensions: RunnerExtensions, own: int) -> int:
    """On a multi-node job, the code of the job's one decision (see CoordinationObserver)."""
    from devops.skypilot.node.coordination import CoordinationObserver

    for observer in extensions.observers:
        if isinstance(observer, CoordinationObserver):
            return observer.exit_code(own)
    return own


def _preflight(config: RunConfig, sky: SkyPilotEnv) -> Preflight:
    def preflight(stop: Callable[[], bool], env: Mapping[str, str]) -> Verdict | None:
        from devops.skypilot.node.nccl import preflight as nccl
        from devops.skypilot.node.nccl.results import PreflightOptions

        options = PreflightOptions(
            timeout=config.preflight_timeout,
            min_busbw_gbps=config.preflight_min_busbw,
            json_path=config.state_dir / nccl.RESULT_FILE,
        )
        result = nccl.run_preflight(
            sky, options, master_port=config.master_port + 1, stop=stop, env=env
        )
        return result.verdict()

    return preflight


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)


def main(args: argparse.Namespace) -> int:
    """Build the config, run one attempt, return its exit code."""
    # From the first line to the last: a signal during start-up (extensions, the
    # port bind) or the ending (notifications, the coordination linger) is recorded
    # and weighed by the runner; it never kills the runner with 143/129 or a traceback.
    with SignalWaker() as waker:
        try:
            config = build_config(args, os.environ)
            sky = skypilot_env(os.environ)
            config = resolve_command(config, sky)
            if config.dry_run:
                print(json.dumps(describe(config, os.environ), indent=2))
                return EXIT_SUCCESS
            prepare_state_dir(config)  # before the extensions write there
            extensions = build_extensions(config, sky)
            code = Runner(config, extensions, waker).run().exit_code
            waker.ignore_stop_signals_on_exit()  # decided: nothing turns it into 143 now
            return job_exit_code(extensions, code)
        except ConfigError as error:
            say(f"skyguard: error: {error}")
            return EXIT_CONFIG_ERROR
