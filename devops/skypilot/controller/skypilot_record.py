"""What the jobs controller knows about a job that its ``event_callback`` is not told.

SkyPilot 0.14.1 calls the callback with the task's ``envs`` only: the task's
``secrets`` (the webhook URLs, the GitHub token) stay out of it, and every failure
arrives as ``FAILED``. Both are in the controller's own record of the job, which
the callback reads the way the controller does (``sky/jobs/controller.py``
``_get_dag``: the stored DAG YAML; ``sky/jobs/state.py``: the status and failure
reason). That is SkyPilot's internal API: anything that goes wrong here is one
line and an empty answer, never a crash, and never an exception's text, which
could quote the stored YAML and its secrets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from devops.skypilot.common.credentials import CREDENTIALS

#: The secrets notifications read: skyguard's own, and GitHub's usual token name.
NOTIFY_SECRETS = frozenset(CREDENTIALS) | {"GITHUB_TOKEN"}
#: The code SkyPilot puts on a RECOVERING event when the job's own exit asked for the
#: restart on a healthy cluster (``recover_on_exit_codes``; ``sky/jobs/state.py``).
RESTART_ON_EXIT_CODE = "USER_JOB_FAILURE"


@dataclass(frozen=True)
class ControllerRecord:
    #: ``ManagedJobStatus`` value, e.g. ``FAILED_SETUP``; None when unknown.
    status: str | None = None
    failure_reason: str = ""
    #: Non-empty notification secrets of the task, by variable name.
    secrets: Mapping[str, str] = field(default_factory=dict)
    #: What could not be read, one line each.
    problems: tuple[str, ...] = ()
    #: The code of the task's newest RECOVERING event (None: none, or no code).
    recovery_code: str | None = None


def _why(what: str, exc: BaseException) -> str:
    # The type only: a YAML or database error may quote the stored task, secrets included.
    return f"cannot read the job's {what} from SkyPilot's record: {type(exc).__name__}"


def read_record(job_id: int, task_index: int) -> ControllerRecord:
    """The controller's record of task ``task_index`` of managed job ``job_id``."""
    try:
        from sky.jobs import file_content_utils
        from sky.jobs import state as job_state
        from sky.utils import dag_utils
    except Exception as exc:
        return ControllerRecord(problems=(_why("record (SkyPilot does not import)", exc),))
    problems: list[str] = []
    status, failure_reason = None, ""
    try:
        found = job_state.get_status(job_id)
        status = found.value if found is not None else None
        failure_reason = job_state.get_failure_reason(job_id) or ""
    except Exception as exc:
        problems.append(_why("status", exc))
    recovery_code = None
    try:
        # Newest first; SkyPilot records the event before it runs the callback.
        for found_event in job_state.get_job_events(job_id, task_index):
            if getattr(found_event["new_status"], "value", None) == "RECOVERING":
                recovery_code = found_event["code"]
                break
    except Exception as exc:
        problems.append(_why("recovery event", exc))
    secrets: dict[str, str] = {}
    try:
        content = file_content_utils.get_job_dag_content(job_id)
        if content is None:
            raise LookupError("no stored task")
        task = dag_utils.load_dag_from_yaml_str(content).tasks[task_index]
        for name, value in task.secrets.items():
            plain = value.get_secret_value() if hasattr(value, "get_secret_value") else value
            if name in NOTIFY_SECRETS and isinstance(plain, str) and plain:
                secrets[name] = plain
    except Exception as exc:
        problems.append(_why("secrets", exc))
    return ControllerRecord(status, failure_reason, secrets, tuple(problems), recovery_code)
