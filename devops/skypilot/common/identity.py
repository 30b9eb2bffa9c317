"""The run key: the identity the runner keeps its state under.

Attempt counts, the runtime budget and notification dedup live in
``<state root>/<run key>/``, so the key must stay the same across every recovery of
one launch, even when SkyPilot's jobs controller restarts in between (HA, an API
server restart), and must differ between launches, so a re-launch never inherits
an old attempt count. In order:

1. ``SKYGUARD_RUN_KEY``: ``skyguard launch`` stamps ``<run name>-<random>`` into the
   task's envs; a recovery re-runs the same task, so it keeps it.
2. A managed job's ``SKYPILOT_TASK_ID`` without the controller's timestamp.
   SkyPilot 0.14.1 builds it as ``sky-managed-<timestamp>_<job name>_<managed job
   id>-<task index>`` (``sky/jobs/controller.py``, ``JobController._load_dag`` via
   ``common_utils.get_global_job_id(self._backend.run_timestamp, ...)``): the
   timestamp is when that controller process started managing the job, so a
   restarted controller stamps a new one. The job name and the managed job id (its
   row in the jobs database, which a restart keeps) are what is left:
   ``<job name>_<managed job id>-<task index>``. Ids are unique per jobs controller
   only: two controllers (two API servers) writing one bucket can both have a job
   ``train`` number 3; give each its own bucket, or use ``skyguard launch``.
3. Any other ``SKYPILOT_TASK_ID`` as it is: a plain ``sky launch`` is never
   recovered, and its id differs between launches (an unknown managed form too).
4. ``local-<random>`` outside SkyPilot.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping

from devops.skypilot.common.values import ConfigError

RUN_KEY_ENV = "SKYGUARD_RUN_KEY"
#: ``sky_logging.get_run_timestamp()``: ``sky-%Y-%m-%d-%H-%M-%S-%f``, with
#: ``managed-`` inserted by ``get_global_job_id(..., is_managed_job=True)``.
_MANAGED_TASK_ID = re.compile(
    r"sky-managed-\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}-\d+_(?P<rest>.+_(?P<job>\d+)-\d+)"
)
#: A run key is one path component on every filesystem a bucket may be mounted as.
_RUN_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def run_key(env: Mapping[str, str]) -> str:
    """The run key for this node's environment. Raises :class:`ConfigError`."""
    stamped = env.get(RUN_KEY_ENV, "").strip()
    if stamped:
        if not _RUN_KEY.fullmatch(stamped) or ".." in stamped:
            raise ConfigError(
                f"{RUN_KEY_ENV}={stamped!r}: use 1-200 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        return stamped
    task_id = env.get("SKYPILOT_TASK_ID", "").strip()
    if not task_id:
        return f"local-{uuid.uuid4().hex[:12]}"
    managed = _MANAGED_TASK_ID.fullmatch(task_id)
    job_id = env.get("SKYPILOT_MANAGED_JOB_ID", "").strip()
    if managed is not None and job_id in ("", managed["job"]):
        return safe_name(managed["rest"])
    return safe_name(task_id)


def safe_name(text: str) -> str:
    """``text`` as one path component: anything but letters, digits, ``._-`` becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)
