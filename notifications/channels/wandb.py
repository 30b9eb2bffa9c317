"""Weights & Biases (optional extra): the end of the job, written into the job's own run.

The run is the one the training code logs to, named by ``WANDB_RUN_ID`` (which
``wandb.init`` in the training code also picks up). We write the reason and exit
code into its summary and raise a ``wandb.alert`` for failures and retries. We never
create a run.

Online, we resume it (``resume="must"`` refuses an unknown id) and finish it with the
job's exit code; ``wandb`` is imported in the background when the job starts, since
the import alone takes most of a second. Offline, W&B would write every resume into
another ``offline-run-*-<id>`` directory, which ``wandb sync`` uploads as another
instance of the run that may replace its config and summary; so skyguard adds its
records to the training run's own offline log instead (:mod:`wandb_log`), without
importing wandb at all.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit

from notifications.channels import wandb_log
from notifications.notifier import Delivery, Event, Level, Notifier, clean_text
from notifications.secrets import Secret

logger = logging.getLogger(__name__)

#: W&B alert level per event level; None: summary only.
ALERT_LEVELS: Mapping[Level, str | None] = {
    Level.STATUS: None,
    Level.INFO: None,
    Level.WARNING: "WARN",
    Level.ERROR: "ERROR",
}
TEXT_LIMIT = 1000
#: W&B refuses alert titles of 64 characters or more.
TITLE_LIMIT = 63
WandbMode = Literal["online", "offline", "disabled", "shared"]
#: ``WANDB_MODE`` values W&B accepts, with the legacy spellings it still reads.
MODES: Mapping[str, WandbMode] = {
    "online": "online",
    "run": "online",
    "offline": "offline",
    "dryrun": "offline",
    "disabled": "disabled",
    "shared": "shared",
}
#: Settings newer W&B versions know (older ones lack some; those are left out).
#: A resume that only writes a summary must not replace the training run's
#: system metrics, machine metadata or requirements with the runner's, and
#: collecting them costs most of ``wandb.init``'s time.
QUIET_SETTINGS: Mapping[str, Any] = {
    "x_disable_stats": True,
    "x_disable_meta": True,
    "x_disable_machine_info": True,
    "x_save_requirements": False,
    # The local run dir is named by the second a run starts: one of a job that
    # died within a second of its own wandb.init would otherwise be shared.
    "x_sync_dir_suffix": "skyguard",
}
PUBLIC_API_HOST = "api.wandb.ai"
PUBLIC_APP_URL = "https://wandb.ai"


@dataclass(frozen=True)
class WandbSettings:
    run_id: str | None = None
    project: str | None = None
    entity: str | None = None
    #: ``WANDB_MODE``: online (None), offline, disabled.
    mode: str | None = None
    #: ``WANDB_DIR``: where runs are written (W&B's default: the working directory).
    directory: Path | None = None
    #: ``WANDB_BASE_URL`` for a self-hosted server.
    base_url: str | None = None
    #: ``WANDB_API_KEY``: W&B reads it itself; kept only to scrub it from output.
    api_key: Secret | None = None
    #: Raise ``wandb.alert`` for retries and failures.
    alerts: bool = True

    @property
    def resolved_mode(self) -> WandbMode:
        return MODES.get(self.mode or "online", "online")

    @property
    def offline(self) -> bool:
        # W&B writes locally and ignores ``resume`` in this mode.
        return self.resolved_mode == "offline"

    @property
    def runs_root(self) -> Path:
        return (self.directory or Path.cwd()) / "wandb"

    def run_url(self) -> str | None:
        """The run's web page, when entity, project and id are known."""
        run_id, project, entity = self.run_id, self.project, self.entity
        if not (run_id and project and entity) or self.offline:
            return None
        base = (self.base_url or PUBLIC_APP_URL).rstrip("/")
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return None
        if parts.hostname == PUBLIC_API_HOST:
            base = PUBLIC_APP_URL
        path = "/".join(quote(part, safe="") for part in (entity, project, "runs", run_id))
        return f"{base}/{path}"

    def offline_runs(self) -> list[Path]:
        """The run's offline directories, oldest first (named by their start time)."""
        if not self.run_id:
            return []
        return sorted(self.runs_root.glob(f"offline-run-*-{self.run_id}"))

    def offline_log(self) -> Path | None:
        """The transaction log of the run's newest offline directory, if there is one."""
        runs = self.offline_runs()
        log = runs[-1] / f"run-{self.run_id}.wandb" if runs else None
        return log if log is not None and log.is_file() else None


def _import_wandb() -> None:
    try:
        importlib.import_module("wandb")
    except Exception as exc:  # the send reports it; warming up must not
        logger.debug("wandb warm-up import failed: %s", type(exc).__name__)


def summary_for(event: Event) -> dict[str, Any]:
    return {
        "skyguard/phase": event.phase.value,
        "skyguard/reason": event.reason.value if event.reason else None,
        "skyguard/exit_code": event.exit_code,
        "skyguard/attempt": event.attempt,
        "skyguard/detail": clean_text(event.detail)[:TEXT_LIMIT],
    }


class WandbNotifier(Notifier):
    name = "wandb"

    def __init__(self, settings: WandbSettings) -> None:
        self.settings = settings

    def missing(self) -> str | None:
        # Offline, the run's log is written without wandb.
        if not self.settings.offline and importlib.util.find_spec("wandb") is None:
            return "wandb not installed (pip install 'skyguard[wandb]')"
        if self.settings.resolved_mode == "disabled":
            return f"WANDB_MODE={self.settings.mode}"
        if not self.settings.run_id:
            return "no WANDB_RUN_ID: there is no run to report to, and none is created"
        return None

    def secrets(self) -> tuple[str, ...]:
        key = self.settings.api_key
        return () if key is None else (key.reveal(),)

    def warm_up(self) -> None:
        """Import wandb in the background while the job runs: the import alone takes
        most of a second, which would otherwise be added to the job's exit."""
        # Offline sends do not import wandb: the import would only compete for the CPU.
        if self.enabled and not self.settings.offline:
            threading.Thread(target=_import_wandb, name="wandb-warm-up", daemon=True).start()

    def _alert_level(self, event: Event) -> str | None:
        if not self.settings.alerts:
            return None
        return "INFO" if event.test else ALERT_LEVELS[event.level]

    def _send(self, event: Event, deadline: float | None) -> Delivery:
        if self.settings.offline:
            return self._send_offline(event)
        return self._send_online(event, deadline)

    def _send_offline(self, event: Event) -> Delivery:
        settings = self.settings
        log = settings.offline_log()
        if log is None or settings.run_id is None:
            return Delivery.skipped(
                self.name,
                f"no offline run {settings.run_id} under {settings.runs_root}: not creating one",
            )
        if log.with_name(f"{log.name}.synced").exists():
            return Delivery.skipped(self.name, f"{log.parent.name} is already synced: left alone")
        if event.test:
            # A test changes nothing lasting, and this log is the training run itself.
            return Delivery.skipped(
                self.name, f"test: offline run {log.parent.name} found, left alone"
            )
        level = self._alert_level(event)
        records = [(wandb_log.RECORD_SUMMARY, wandb_log.summary_message(summary_for(event)))]
        done = ["summary"]
        if level is not None:
            text = clean_text(event.detail)[:TEXT_LIMIT] or event.headline
            alert = wandb_log.alert_message(event.headline[:TITLE_LIMIT], text, level)
            records.append((wandb_log.RECORD_ALERT, alert))
            done.append(f"{level.lower()} alert")
        exit_code = 0 if event.exit_code is None else event.exit_code
        try:
            wandb_log.insert_before_exit(log, records, settings.run_id, exit_code)
        except (wandb_log.WandbLogError, OSError) as exc:
            return Delivery.failed(self.name, f"cannot add to {log.parent.name}: {exc}")
        return Delivery.sent(
            self.name, f"run {settings.run_id}: {' + '.join(done)} (in {log.parent.name})"
        )

    def _send_online(self, event: Event, deadline: float | None) -> Delivery:
        settings = self.settings
        try:
            import wandb
        except ImportError:
            return Delivery.skipped(self.name, "wandb not installed")
        level = self._alert_level(event)
        init_timeout = 90.0 if deadline is None else max(1.0, deadline - time.monotonic())
        known = getattr(wandb.Settings, "model_fields", {})
        run_settings: dict[str, Any] = {
            "console": "off",
            "silent": True,
            "init_timeout": init_timeout,
        }
        run_settings.update({k: v for k, v in QUIET_SETTINGS.items() if k in known})
        run = wandb.init(
            id=settings.run_id,
            project=settings.project,
            entity=settings.entity,
            dir=str(settings.directory) if settings.directory else None,
            mode=settings.resolved_mode,
            resume="must",
            save_code=False,
            settings=wandb.Settings(**run_settings),
        )
        done: list[str] = []
        try:
            if not event.test:
                run.summary.update(summary_for(event))
                done.append("summary")
            if level is not None:
                run.alert(
                    title=event.headline[:TITLE_LIMIT],
                    text=clean_text(event.detail)[:TEXT_LIMIT] or event.headline,
                    level=level,
                )
                done.append(f"{level.lower()} alert")
        finally:
            # Marks the run with the job's result; the next attempt resumes it again.
            exit_code = 0 if event.test or event.exit_code is None else event.exit_code
            run.finish(exit_code=exit_code)
            # finish() hands the records to W&B's service process; teardown waits
            # until they are uploaded, so "sent" means sent.
            wandb.teardown()
        return Delivery.sent(self.name, f"run {settings.run_id}: {' + '.join(done) or 'nothing'}")
