"""``skyguard notify --test``: send a test event on every configured channel.

Prints one line per channel with what happened. Exit 0 when nothing failed,
1 when a channel failed, 2 on bad configuration (one line, no traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from devops.skypilot.common.lifecycle import Phase
from devops.skypilot.common.termination import EXIT_CONFIG_ERROR, TerminationReason
from notifications.config import CHANNELS, ConfigError, NotificationConfig
from notifications.notifier import Delivery, DeliveryStatus, Event, Level

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

TEST_DETAIL = "skyguard notify --test: if you can read this, notifications work."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--test",
        action="store_true",
        help="send a test event to each configured channel and report per channel",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML file with a [notifications] table (env SKYGUARD_CONFIG)",
    )
    parser.add_argument(
        "--job-name",
        default=None,
        help="job name shown in the test message (env SKYGUARD_JOB_NAME; default skyguard-test)",
    )


def load_section(path: Path) -> Mapping[str, Any] | None:
    """The ``[notifications]`` table of a TOML file; raises ConfigError."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    section = data.get("notifications")
    if section is not None and not isinstance(section, dict):
        raise ConfigError(f"{path}: [notifications] must be a table")
    return section


def test_event(config: NotificationConfig, job_name: str) -> Event:
    return Event(
        job_name=job_name,
        task_id="notify-test",
        phase=Phase.SUCCEEDED,
        reason=TerminationReason.COMPLETED,
        exit_code=0,
        detail=TEST_DETAIL,
        links=config.links(job_name, "notify-test"),
        run_id=config.wandb.run_id,
        level=Level.INFO,
        test=True,
    )


def run_test(config: NotificationConfig, job_name: str) -> list[Delivery]:
    """Every channel, listed or not: the ones not listed say why they were skipped."""
    orchestrator = config.orchestrator()
    deliveries = orchestrator.deliver(test_event(config, job_name), log=False)
    sent_on = {n.name for n in orchestrator.notifiers}
    why = "notifications disabled (enabled = false)" if not config.enabled else "not in channels"
    skipped = [Delivery.skipped(name, why) for name in CHANNELS if name not in sent_on]
    order = {name: i for i, name in enumerate(CHANNELS)}
    return sorted(deliveries + skipped, key=lambda d: order.get(d.channel, len(order)))


def main(args: argparse.Namespace) -> int:
    if not args.test:
        print("skyguard notify: nothing to do; use --test", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    env = os.environ
    config_path = args.config or (
        Path(env["SKYGUARD_CONFIG"]) if env.get("SKYGUARD_CONFIG") else None
    )
    try:
        section = load_section(config_path) if config_path else None
        config = NotificationConfig.from_sources(section, env)
    except ConfigError as exc:
        print(f"skyguard notify: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    job_name = args.job_name or env.get("SKYGUARD_JOB_NAME") or "skyguard-test"
    deliveries = run_test(config, job_name)
    for delivery in deliveries:
        print(delivery.line())
    return 1 if any(d.status is DeliveryStatus.FAILED for d in deliveries) else 0
