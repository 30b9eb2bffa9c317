"""``skyguard notify-event``: SkyPilot's ``event_callback``, on the jobs controller.

``recipes/job.yaml`` sets it; SkyPilot runs it at every status change of the managed
job with the task's ``envs`` plus ``JOB_ID``, ``TASK_ID``, ``JOB_STATUS``,
``CLUSTER_NAME`` and ``TASK_NAME``. It announces the ends the head node's runner
cannot (a cancel that tears the cluster down, a preemption without grace, a failed
setup, a cluster that never came up, a failed controller) through the same channels
and routing table as the runner, and the same sent-log where it can see the
runner's state dir: one message per task, phase and reason, whoever sends it.
Output goes to SkyPilot's callback log; every line starts with ``skyguard
notify-event:``. Exit 0 when nothing failed, 1 when a channel failed, 2 when it
was not called the way SkyPilot calls it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from devops.skypilot.common.identity import run_key
from devops.skypilot.common.termination import EXIT_CONFIG_ERROR, Termination
from devops.skypilot.common.values import ConfigError as ValueConfigError
from devops.skypilot.controller.skypilot_record import (
    RESTART_ON_EXIT_CODE,
    ControllerRecord,
    read_record,
)
from devops.skypilot.controller.statuses import (
    RECOVERING_ON_EXIT,
    STATUS_RULES,
    StateView,
    Told,
    what_to_tell,
)
from notifications.cli import load_section
from notifications.config import ConfigError, NotificationConfig
from notifications.notifier import DeliveryStatus, Event
from notifications.orchestrator import CONTROLLER_CHANNELS, Orchestrator

PREFIX = "skyguard notify-event:"
#: The runner's checkpoint of a running attempt (``devops/skypilot/node/state.py``).
ATTEMPT_FILE = "attempt.json"
TERMINATION_FILE = "termination.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No flags: SkyPilot passes everything in the environment."""
    del parser


def say(text: str) -> None:
    print(f"{PREFIX} {text}", flush=True)


def state_dirs(env: Mapping[str, str], key: str) -> tuple[Path, bool]:
    """Where the sent-log is kept, and whether that is the head runner's state dir.

    The runner's is ``$SKYGUARD_STATE_DIR``, else ``$SKYGUARD_STATE_ROOT/<run key>/node-0``;
    the controller sees it when the root is a path it shares (Slurm home, NFS, the
    same host). A bucket only the nodes mount is not: the controller keeps its own
    sent-log then, so at least it never repeats itself.
    """
    explicit = env.get("SKYGUARD_STATE_DIR", "").strip()
    if explicit and Path(explicit).expanduser().is_dir():
        return Path(explicit).expanduser(), True
    root = env.get("SKYGUARD_STATE_ROOT", "").strip()
    if not explicit and root and Path(root).expanduser().is_dir():
        return Path(root).expanduser() / key / "node-0", True
    return Path.home() / ".skyguard" / "controller" / key, False


def view_of(state_dir: Path, visible: bool) -> StateView:
    if not visible:
        return StateView(visible=False)
    last = None
    try:
        data = json.loads((state_dir / TERMINATION_FILE).read_text(encoding="utf-8"))
        last = Termination.from_json({k: v for k, v in data.items() if k != "history"})
    except (OSError, ValueError, TypeError, AttributeError):
        last = None  # none yet, or unreadable: the status table speaks
    return StateView(True, last, (state_dir / ATTEMPT_FILE).exists())


def _index(env: Mapping[str, str], name: str) -> int:
    value = env.get(name, "").strip()
    if not value.isdigit():
        raise ValueError(f"{name}={value!r} is not a number")
    return int(value)


def main(args: argparse.Namespace) -> int:
    del args
    env = dict(os.environ)
    status = env.get("JOB_STATUS", "").strip()
    if not status:
        print(
            f"{PREFIX} JOB_STATUS is not set: this is SkyPilot's event_callback "
            "(recipes/job.yaml), run by the jobs controller",
            file=sys.stderr,
        )
        return EXIT_CONFIG_ERROR
    if status not in STATUS_RULES:
        say(f"{status}: a status skyguard does not know; nothing sent")
        return 0
    if STATUS_RULES[status] is None:
        say(f"{status}: nothing to tell")
        return 0
    try:
        job_id = _index(env, "JOB_ID")
        task_index = _index(env, "TASK_ID")
    except ValueError as exc:
        print(f"{PREFIX} {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    record = read_record(job_id, task_index)
    return announce(status, record, env, job_id)


def announce(status: str, record: ControllerRecord, env: dict[str, str], job_id: int) -> int:
    for problem in record.problems:
        say(problem)
    # SkyPilot says FAILED for every failure; its record says which. Likewise RECOVERING
    # for a lost node and for the runner's own retry (its exit 75).
    kind = record.status if status == "FAILED" and record.status in STATUS_RULES else status
    if status == "RECOVERING" and record.recovery_code == RESTART_ON_EXIT_CODE:
        kind = RECOVERING_ON_EXIT
    rule = STATUS_RULES[kind]
    if rule is None:
        return 0
    # The task's own secrets win over whatever the controller's environment holds.
    env.update(record.secrets)
    env.setdefault("SKYPILOT_MANAGED_JOB_ID", str(job_id))
    try:
        section = _config_section(env)
        config = NotificationConfig.from_sources(section, env)
        key = run_key(env)
    except (ConfigError, ValueConfigError) as exc:
        print(f"{PREFIX} {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    state_dir, visible = state_dirs(env, key)
    told = what_to_tell(rule, view_of(state_dir, visible))
    if isinstance(told, str):
        say(f"{kind}: {told}")
        return 0
    orchestrator = Orchestrator(
        [n for n in config.notifiers() if n.name in CONTROLLER_CHANNELS],
        deadline=config.deadline,
        retry=config.retry,
    )
    job_name = (
        env.get("SKYGUARD_JOB_NAME") or env.get("CLUSTER_NAME") or env.get("TASK_NAME") or key
    )
    event = _event(told, record, config, job_name, key, kind, told.detail == rule.detail)
    deliveries = orchestrator.notify(event, state_dir=state_dir)
    for delivery in deliveries:
        what = f"{kind} -> {told.phase.value}/{told.reason.value}"
        say(orchestrator.redactor(f"{what}: {delivery.line()}"))
    if not deliveries:
        say(f"{kind}: no channel is configured here (docs/notifications.md)")
    return 1 if any(d.status is DeliveryStatus.FAILED for d in deliveries) else 0


def _config_section(env: Mapping[str, str]) -> Mapping[str, object] | None:
    """The ``[notifications]`` table, when ``SKYGUARD_CONFIG`` names a file here too."""
    path = env.get("SKYGUARD_CONFIG", "").strip()
    if not path or not Path(path).expanduser().is_file():
        return None  # the config file is the node's (its workdir); envs still apply
    return load_section(Path(path).expanduser())


def _event(
    told: Told,
    record: ControllerRecord,
    config: NotificationConfig,
    job_name: str,
    key: str,
    kind: str,
    from_table: bool,
) -> Event:
    detail = told.detail
    if from_table and record.failure_reason:
        detail = f"{detail}: {record.failure_reason}"
    return Event(
        job_name=job_name,
        task_id=key,
        phase=told.phase,
        reason=told.reason,
        exit_code=told.exit_code,
        detail=f"{detail} (SkyPilot: {kind})",
        attempt=told.attempt,
        links=config.links(job_name, key),
    )
