"""W&B in offline mode against a real offline run written by a separate "training" process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devops.skypilot.common.lifecycle import Phase
from devops.skypilot.common.termination import TerminationReason
from notifications.channels.wandb import WandbNotifier, WandbSettings
from notifications.notifier import DeliveryStatus, Level
from notifications.orchestrator import Orchestrator
from notifications.secrets import Secret
from tests.notifications.notify_fakes import make_event

pytest.importorskip("wandb")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:wandb")

RUN_ID = "skyguardtest01"

TRAINING = """
import sys, wandb
run = wandb.init(mode="offline", id=sys.argv[1], project="skyguard-tests", dir=sys.argv[2],
                 settings=wandb.Settings(console="off", silent=True))
run.log({"loss": 1.5})
run.finish()
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The job's own offline run, written once by a separate "training" process."""
    directory = tmp_path_factory.mktemp("trained")
    train(directory)
    return directory


@pytest.fixture
def offline_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An offline W&B setup in tmp_path; W&B's service process is shut down afterwards."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    import wandb

    try:
        yield tmp_path
    finally:
        wandb.teardown()


def with_training_run(trained: Path, directory: Path) -> None:
    shutil.copytree(trained / "wandb", directory / "wandb")


def train(directory: Path, run_id: str = RUN_ID) -> None:
    """The job's own run, created by another process as training code would."""
    subprocess.run(
        [sys.executable, "-c", TRAINING, run_id, str(directory)],
        check=True,
        timeout=120,
        capture_output=True,
    )


def settings(directory: Path, **changes: Any) -> WandbSettings:
    values: dict[str, Any] = {
        "run_id": RUN_ID,
        "project": "skyguard-tests",
        "mode": "offline",
        "directory": directory,
    }
    values.update(changes)
    return WandbSettings(**values)


def records(directory: Path, run_id: str = RUN_ID) -> dict[str, list[Any]]:
    """Summary updates, alerts and exit codes written to every offline dir of the run."""
    # W&B's own reader for its transaction log (internal API, fine for a test).
    from wandb.proto import wandb_internal_pb2
    from wandb.sdk.internal import datastore

    pb: Any = wandb_internal_pb2

    found: dict[str, list[Any]] = {"summary": [], "alert": [], "exit": []}
    for path in sorted((directory / "wandb").glob(f"offline-run-*-{run_id}*/run-{run_id}.wandb")):
        store: Any = datastore.DataStore()
        store.open_for_scan(str(path))
        while (data := store.scan_data()) is not None:
            record = pb.Record()
            record.ParseFromString(data)
            kind = record.WhichOneof("record_type")
            if kind == "summary":
                found["summary"] += [
                    (u.key or ".".join(u.nested_key), json.loads(u.value_json))
                    for u in record.summary.update
                ]
            elif kind == "alert":
                found["alert"].append((record.alert.title, record.alert.level))
            elif kind == "exit":
                found["exit"].append(record.exit.exit_code)
    return found


def test_failure_writes_summary_alert_and_exit_code_into_the_jobs_run(
    offline_env: Path, trained: Path
) -> None:
    with_training_run(trained, offline_env)
    (training_log,) = (offline_env / "wandb").glob(f"offline-run-*-{RUN_ID}/run-{RUN_ID}.wandb")
    before = training_log.read_bytes()
    event = make_event(level=Level.ERROR, run_id=RUN_ID)
    (delivery,) = Orchestrator([WandbNotifier(settings(offline_env))]).deliver(event)
    assert delivery.ok, delivery
    assert delivery.detail == f"run {RUN_ID}: summary + error alert"
    found = records(offline_env)
    summary = dict(found["summary"])
    assert summary["skyguard/reason"] == "job_failed"
    assert summary["skyguard/exit_code"] == 1
    assert summary["skyguard/phase"] == "failed"
    assert found["alert"] == [("train-7b failed: job_failed (exit 1), attempt 2", "ERROR")]
    assert found["exit"][-1] == 1
    assert summary["loss"] == 1.5  # the training run itself is there too
    # Our records sit in a directory of their own, never in (over) the training's.
    dirs = sorted(p.name for p in (offline_env / "wandb").glob("offline-run-*"))
    assert len(dirs) == 2 and [d.endswith("-skyguard") for d in dirs].count(True) == 1
    assert training_log.read_bytes() == before


def test_success_writes_the_summary_without_an_alert(offline_env: Path, trained: Path) -> None:
    with_training_run(trained, offline_env)
    event = make_event(
        phase=Phase.SUCCEEDED,
        reason=TerminationReason.COMPLETED,
        exit_code=0,
        level=Level.INFO,
    )
    delivery = WandbNotifier(settings(offline_env)).send(event)
    assert delivery.ok and delivery.detail == f"run {RUN_ID}: summary"
    found = records(offline_env)
    assert dict(found["summary"])["skyguard/reason"] == "completed"
    assert found["alert"] == []


def test_an_unknown_run_is_skipped_and_no_stray_run_is_created(
    offline_env: Path, trained: Path
) -> None:
    with_training_run(trained, offline_env)
    before = sorted((offline_env / "wandb").iterdir())
    delivery = WandbNotifier(settings(offline_env, run_id="nosuchrun")).send(make_event())
    assert delivery.status is DeliveryStatus.SKIPPED
    assert "not creating one" in delivery.detail
    assert sorted((offline_env / "wandb").iterdir()) == before


def test_without_a_run_id_nothing_is_created(offline_env: Path) -> None:
    notifier = WandbNotifier(settings(offline_env, run_id=None))
    delivery = notifier.send(make_event())
    assert delivery.status is DeliveryStatus.SKIPPED and "WANDB_RUN_ID" in delivery.detail
    assert not (offline_env / "wandb").exists()


def test_wandb_not_installed_is_skipped_not_a_crash(
    offline_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)
    delivery = WandbNotifier(settings(offline_env)).send(make_event())
    assert delivery.status is DeliveryStatus.SKIPPED
    assert delivery.detail.startswith("wandb not installed")


def test_disabled_mode_is_skipped() -> None:
    delivery = WandbNotifier(WandbSettings(run_id=RUN_ID, mode="disabled")).send(make_event())
    assert delivery.status is DeliveryStatus.SKIPPED and "disabled" in delivery.detail


def test_run_url_points_at_the_app_not_the_api() -> None:
    online = WandbSettings(run_id="r1", project="p", entity="e")
    assert online.run_url() == "https://wandb.ai/e/p/runs/r1"
    hosted = WandbSettings(run_id="r1", project="p", entity="e", base_url="https://wb.corp/")
    assert hosted.run_url() == "https://wb.corp/e/p/runs/r1"
    assert WandbSettings(run_id="r1", project="p").run_url() is None


def test_the_api_key_is_never_shown() -> None:
    key = "wandbkey" + "9" * 32
    notifier = WandbNotifier(WandbSettings(api_key=Secret(key)))
    assert key not in repr(notifier.settings)
    assert notifier.secrets() == (key,)
