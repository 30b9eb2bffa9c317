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


def log_records(log: Path) -> list[Any]:
    """Every record of a transaction log, read with W&B's own reader and protobuf classes."""
    from wandb.proto import wandb_internal_pb2
    from wandb.sdk.internal import datastore

    pb: Any = wandb_internal_pb2
    store: Any = datastore.DataStore()
    store.open_for_scan(str(log))
    found = []
    while (data := store.scan_data()) is not None:
        record = pb.Record()
        record.ParseFromString(data)
        found.append(record)
    store.close()
    return found


def the_log(directory: Path) -> Path:
    """The run's one offline log: there must never be a second directory for the id."""
    (run_dir,) = (directory / "wandb").glob(f"offline-run-*-{RUN_ID}*")
    return run_dir / f"run-{RUN_ID}.wandb"


def kinds(records: list[Any]) -> list[str]:
    return [r.WhichOneof("record_type") for r in records]


def summary_of(records: list[Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            for u in r.summary.update:
                summary[u.key or ".".join(u.nested_key)] = json.loads(u.value_json)
    return summary


def test_failure_is_written_into_the_training_runs_own_log(
    offline_env: Path, trained: Path
) -> None:
    with_training_run(trained, offline_env)
    log = the_log(offline_env)
    before = log_records(log)
    assert kinds(before)[-1] == "exit"
    event = make_event(level=Level.ERROR, run_id=RUN_ID)
    (delivery,) = Orchestrator([WandbNotifier(settings(offline_env))]).deliver(event)
    assert delivery.ok, delivery
    assert delivery.detail == f"run {RUN_ID}: summary + error alert (in {log.parent.name})"
    assert the_log(offline_env) == log  # still one directory for the run
    after = log_records(log)
    # Every record of the training is still there, unchanged and in order; ours come
    # before the exit, which W&B sends last; record numbers stay consecutive.
    assert [r.SerializeToString() for r in after[: len(before) - 1]] == [
        r.SerializeToString() for r in before[:-1]
    ]
    assert kinds(after)[len(before) - 1 :] == ["summary", "alert", "exit"]
    assert [r.num for r in after] == list(range(1, len(after) + 1))
    exit_record = after[-1]
    exit_record.num = before[-1].num
    assert exit_record.SerializeToString() == before[-1].SerializeToString()
    summary = summary_of(after)
    assert summary["skyguard/reason"] == "job_failed"
    assert summary["skyguard/exit_code"] == 1
    assert summary["skyguard/phase"] == "failed"
    assert summary["loss"] == 1.5  # the training's own summary is untouched
    alert = after[-2].alert
    assert (alert.title, alert.level) == (
        "train-7b failed: job_failed (exit 1), attempt 2",
        "ERROR",
    )
    assert alert.wait_duration == 60_000  # what run.alert itself writes by default


def test_wandb_sync_sends_our_records_and_keeps_the_exit_for_last(
    offline_env: Path, trained: Path
) -> None:
    """wandb sync's own record filter (wandb/sync/sync.py) over the merged log."""
    from wandb.sync.sync import SyncThread

    with_training_run(trained, offline_env)
    event = make_event(level=Level.ERROR, run_id=RUN_ID)
    assert WandbNotifier(settings(offline_env)).send(event).ok
    sync = SyncThread(sync_list=[])
    sent, exit_pb = [], None
    for record in log_records(the_log(offline_env)):
        pb, exit_pb, held = sync._parse_pb(record.SerializeToString(), exit_pb)
        if not held:
            sent.append(pb.WhichOneof("record_type"))
    assert sent[-2:] == ["summary", "alert"]
    assert exit_pb is not None and exit_pb.exit.exit_code == 0  # the training's own exit


def test_every_notification_of_a_task_goes_into_the_same_log(
    offline_env: Path, trained: Path
) -> None:
    with_training_run(trained, offline_env)
    notifier = WandbNotifier(settings(offline_env))
    retrying = make_event(
        phase=Phase.RETRYING,
        reason=TerminationReason.HEARTBEAT_TIMEOUT,
        exit_code=75,
        level=Level.WARNING,
    )
    assert notifier.send(retrying).ok
    assert notifier.send(make_event(level=Level.ERROR)).ok
    after = log_records(the_log(offline_env))
    assert kinds(after)[-5:] == ["summary", "alert", "summary", "alert", "exit"]
    assert summary_of(after)["skyguard/phase"] == "failed"  # the last word wins
    assert [r.num for r in after] == list(range(1, len(after) + 1))


def test_a_killed_training_gets_our_records_and_an_exit(offline_env: Path, trained: Path) -> None:
    """A run killed mid-write has no exit record and a torn last chunk."""
    with_training_run(trained, offline_env)
    log = the_log(offline_env)
    records = log_records(log)
    exit_start = len(log.read_bytes()) - (len(records[-1].SerializeToString()) + 7)
    with log.open("r+b") as handle:
        handle.truncate(exit_start + 5)  # the exit record torn after 5 bytes
    event = make_event(
        phase=Phase.RETRYING,
        reason=TerminationReason.HEARTBEAT_TIMEOUT,
        exit_code=75,
        level=Level.WARNING,
    )
    assert WandbNotifier(settings(offline_env)).send(event).ok
    after = log_records(log)
    assert kinds(after) == [*kinds(records)[:-1], "summary", "alert", "exit"]
    assert after[-1].exit.exit_code == 75


def test_success_writes_the_summary_without_an_alert(offline_env: Path, trained: Path) -> None:
    with_training_run(trained, offline_env)
    event = make_event(
        phase=Phase.SUCCEEDED,
        reason=TerminationReason.COMPLETED,
        exit_code=0,
        level=Level.INFO,
    )
    delivery = WandbNotifier(settings(offline_env)).send(event)
    assert delivery.ok and delivery.detail.startswith(f"run {RUN_ID}: summary (in ")
    after = log_records(the_log(offline_env))
    assert summary_of(after)["skyguard/reason"] == "completed"
    assert "alert" not in kinds(after)


@pytest.mark.parametrize("case", ["test", "synced", "foreign"])
def test_a_log_that_must_not_change_is_left_alone(
    offline_env: Path, trained: Path, case: str
) -> None:
    with_training_run(trained, offline_env)
    log = the_log(offline_env)
    if case == "synced":
        log.with_name(log.name + ".synced").touch()
    if case == "foreign":
        log.write_bytes(b"not a W&B log" + log.read_bytes())
    before = log.read_bytes()
    delivery = WandbNotifier(settings(offline_env)).send(make_event(test=case == "test"))
    expected = {"test": "skipped", "synced": "skipped", "foreign": "failed"}[case]
    assert delivery.status.value == expected, delivery
    assert log.read_bytes() == before
    assert sorted(p.name for p in log.parent.iterdir() if p.name.startswith(".run-")) == []


def test_offline_never_imports_wandb(offline_env: Path, trained: Path) -> None:
    """import wandb alone costs most of a second at the runner's exit."""
    with_training_run(trained, offline_env)
    script = (
        "import sys\n"
        "from notifications.channels.wandb import WandbNotifier, WandbSettings\n"
        "from tests.notifications.notify_fakes import make_event\n"
        "from pathlib import Path\n"
        f"settings = WandbSettings(run_id={RUN_ID!r}, mode='offline',\n"
        "                         directory=Path(sys.argv[1]))\n"
        "notifier = WandbNotifier(settings)\n"
        "notifier.warm_up()\n"
        "assert notifier.send(make_event()).ok\n"
        "assert 'wandb' not in sys.modules, 'wandb was imported'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(offline_env)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr


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


def test_wandb_not_installed_only_matters_online(
    offline_env: Path, trained: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_training_run(trained, offline_env)
    monkeypatch.setitem(sys.modules, "wandb", None)
    assert WandbNotifier(settings(offline_env)).send(make_event()).ok
    online = WandbNotifier(settings(offline_env, mode=None))
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    delivery = online.send(make_event())
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
