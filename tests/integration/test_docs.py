"""The README's claims, checked: generated reference, the custom monitor example, the demo."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from devops.skypilot.node import reference
from tests.conftest import PYTHON, REPO, TRAIN, SkyguardRunner

README = (REPO / "README.md").read_text()


def test_config_reference_is_generated_from_the_flags() -> None:
    begin, end = README.index(reference.BEGIN), README.index(reference.END)
    assert README[begin : end + len(reference.END)] == reference.render(), (
        "README's configuration reference is stale: "
        "paste `python -m devops.skypilot.node.reference`"
    )


def test_readme_test_command_is_what_ci_runs() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    assert "test-command" in ci and "eval" in ci
    block = README.split("<!-- test-command -->")[1].split("<!-- /test-command -->")[0]
    assert "bash devops/test.sh" in block


def test_custom_monitor_example_stops_the_job(skyguard: SkyguardRunner, tmp_path: Path) -> None:
    env = skyguard.env({"MIN_FREE_GB": "1e12"})  # no disk has a zettabyte free
    process = subprocess.run(
        [
            PYTHON,
            str(REPO / "examples" / "custom_monitor.py"),
            "--state-dir",
            str(tmp_path),
            "--grace",
            "5",
            "--",
            PYTHON,
            TRAIN,
            "--steps",
            "100000",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert process.returncode == 143, process.stderr
    record = (tmp_path / "termination.json").read_text()
    assert '"monitor": "DiskSpaceMonitor"' in record and "GB free on" in record


def test_demo_command_shows_a_detected_hang(skyguard: SkyguardRunner) -> None:
    """The command devops/demo.sh runs (README's first command, minus its venv set-up)."""
    demo = (REPO / "devops" / "demo.sh").read_text()
    assert "--heartbeat-timeout 5" in demo and "examples/train.py --hang-after 3" in demo
    result = skyguard.run([PYTHON, TRAIN, "--hang-after", "3"], "--heartbeat-timeout", "5")
    assert result.returncode == 75
    assert "train: hanging" in result.stdout
    assert "process tree empty" in result.stderr
    assert result.record["reason"] == "heartbeat_timeout"


def test_readme_heartbeat_snippet_beats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The training-loop snippet, run as shown with a stand-in loader and step."""
    block = README.split("In the training loop, one line")[1].split("```python\n")[1]
    snippet = block.split("```")[0]
    heartbeat_file = tmp_path / "heartbeat"
    monkeypatch.setenv("SKYGUARD_HEARTBEAT_FILE", str(heartbeat_file))
    from devops.skypilot import heartbeat

    monkeypatch.setattr(heartbeat, "_default", None)
    exec(snippet, {"loader": range(3), "train_step": lambda batch: 0.0})
    assert heartbeat_file.exists()
