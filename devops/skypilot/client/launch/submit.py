"""Talking to SkyPilot: submit a task, wait until the job is listed, follow its log.

``sky`` is imported lazily, inside the functions that need it."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any, TypeVar

from devops.skypilot.client.launch.request import LaunchError, one_line

T = TypeVar("T")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
#: How long a submitted job may take to show up in the queue.
REGISTRATION_TIMEOUT = 120.0


@dataclass(frozen=True)
class Submitted:
    name: str
    job_id: int
    cluster: str | None


# ---------------------------------------------------------------- talking to SkyPilot


def sky_message(error: BaseException) -> str:
    """SkyPilot's error as one readable line (no colours, no traceback)."""
    text = _ANSI.sub("", str(error)).strip() or type(error).__name__
    return one_line(text)


def quiet_libraries(verbose: bool) -> None:
    """SkyPilot's dependencies log at INFO (alembic, ...): noise unless asked for."""
    if not verbose:
        logging.getLogger().setLevel(max(logging.getLogger().level, logging.WARNING))


@contextlib.contextmanager
def sky_output(verbose: bool) -> Iterator[None]:
    """SkyPilot prints progress on stdout; keep stdout for job ids."""
    sink: IO[str] = sys.stderr if verbose else io.StringIO()
    with contextlib.redirect_stdout(sink):
        yield


def await_registration(
    check: Callable[[], bool], what: str, timeout: float = REGISTRATION_TIMEOUT
) -> None:
    """Wait until ``check()`` is true with bounded exponential backoff (no fixed sleeps)."""
    import tenacity

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_result(lambda registered: not registered)
        | tenacity.retry_if_exception_type(ConnectionError),
        wait=tenacity.wait_exponential(multiplier=0.25, max=8),
        stop=tenacity.stop_after_delay(timeout),
    )
    try:
        retrying(check)
    except tenacity.RetryError:
        raise LaunchError(f"{what} did not show up within {timeout:g}s") from None


def _managed_job_listed(job_id: int) -> bool:
    import sky

    records, *_ = sky.get(
        sky.jobs.queue_v2(refresh=False, job_ids=[job_id], fields=["job_id", "status"])
    )
    return any(int(record.job_id) == job_id for record in records)


def _cluster_job_listed(cluster: str, job_id: int) -> bool:
    import sky

    return any(int(record["job_id"]) == job_id for record in sky.get(sky.queue(cluster)))


def submit(task: Any, name: str, cluster: str | None, verbose: bool) -> Submitted:
    """Submit one task and wait until SkyPilot lists it."""
    import sky

    request_id: Any
    with sky_output(verbose):
        if cluster is None:
            request_id = sky.jobs.launch(task, name=name)
        else:
            request_id = sky.launch(task, cluster_name=cluster)
        result: Any = sky.stream_and_get(request_id) if verbose else sky.get(request_id)
    if cluster is None:
        job_ids, _handle = result
        if not job_ids:
            raise LaunchError(f"SkyPilot returned no job id for {name}")
        job_id = int(job_ids[0])
        await_registration(lambda: _managed_job_listed(job_id), f"managed job {job_id}")
    else:
        raw_id, _handle = result
        if raw_id is None:
            raise LaunchError(f"SkyPilot returned no job id for {name} on {cluster}")
        job_id = int(raw_id)
        await_registration(
            lambda: _cluster_job_listed(cluster, job_id), f"job {job_id} on {cluster}"
        )
    return Submitted(name=name, job_id=job_id, cluster=cluster)


def follow(submitted: Submitted) -> int:
    """Stream a job's logs to stdout until it ends; 0 if it succeeded."""
    import sky

    if submitted.cluster is None:
        code = sky.jobs.tail_logs(job_id=submitted.job_id, follow=True)
    else:
        code = sky.tail_logs(submitted.cluster, submitted.job_id, follow=True)
    return 0 if code in (0, None) else 1
