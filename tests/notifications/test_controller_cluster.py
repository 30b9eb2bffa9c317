"""``skyguard notify-event`` against SkyPilot's real jobs database, as on a controller cluster
(SkyPilot's default: no ``consolidation_mode``, no skyguard installed, the runner's state in a
bucket the controller cannot see).

The recipe's event_callback runs the wheel the job shipped, found in SkyPilot's record of the
job. Real pieces, as far as one machine allows: SkyPilot's own Python with no skyguard
importable (a fresh venv that sees only this venv's site-packages: SkyPilot and its
dependencies, not skyguard's editable finder), SkyPilot's jobs database in a fresh home
holding the job's task as the controller stores it (the wheel's file mount rewritten to the
controller's copy, as ``translate_local_file_mounts_to_two_hop`` does), the wheel ``skyguard
launch`` builds, the callback run as SkyPilot runs it (``bash -i FILE`` under its Python),
and a loopback Discord. SkyPilot deletes its copy of the wheel when the job ends, before the
last callback; the test deletes it too. And RECOVERING: SkyPilot's event record tells the
runner's own retry (its exit 75) from a lost node.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

from devops.skypilot.client.launch.wheel import NODE_DIR, build_wheel
from devops.skypilot.controller import bootstrap
from tests.notifications.notify_fakes import discord_ok, webhook_url
from tests.notifications.test_notify_event import Serve

ROOT = Path(__file__).resolve().parents[2]

#: Puts the task into SkyPilot's jobs database the way ``sky jobs launch`` leaves it.
_STORE_JOB = """
import json, sys
import sky
from sky.jobs import state
from sky.utils import dag_utils
task = sky.Task.from_yaml_config(json.loads(sys.argv[1]))
dag = sky.Dag()
dag.add(task)
dag.name = task.name
job_id = state.set_job_info_without_job_id(task.name, "default", "test", None, None, None)
state.set_job_dag_yaml_content(job_id, dag_utils.dump_chain_dag_to_yaml_str(dag))
print(job_id)
"""


def skypilot_only_python(tmp_path: Path) -> Path:
    """A Python with SkyPilot and skyguard's requirements but no skyguard, like the runtime
    SkyPilot installs on a controller cluster."""
    venv = tmp_path / "skypilot-runtime"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60
    )
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    # A plain path line: the directory joins sys.path, its own .pth files (skyguard's
    # editable finder) are not run.
    Path(site, "skypilot.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def run_callback(python: Path, home: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = home / "callback.sh"
    script.write_text(yaml.safe_load((ROOT / "recipes" / "job.yaml").read_text())["event_callback"])
    parent = [
        python,
        "-c",
        f"import subprocess; subprocess.run('/bin/bash -i {script}', shell=True)",
    ]
    return subprocess.run(
        parent,
        cwd=home,
        env={"PATH": "/usr/bin:/bin", "HOME": str(home), **env},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_a_controller_without_skyguard_runs_the_shipped_wheel(
    serve: Serve, webhook_token: str, tmp_path: Path
) -> None:
    server = serve([discord_ok])
    url = webhook_url(server, webhook_token)
    python = skypilot_only_python(tmp_path)
    bare = {"PATH": "/usr/bin:/bin"}
    no_skyguard = [python, "-c", "import devops"]
    assert subprocess.run(no_skyguard, cwd=tmp_path, env=bare, check=False, timeout=60).returncode
    home = tmp_path / "controller-home"
    home.mkdir()
    wheel = build_wheel(tmp_path / "client-cache")
    # Where SkyPilot's first hop put the client's file on the controller.
    hop = home / ".sky" / "tmp" / "controller" / "run1" / "0"
    hop.parent.mkdir(parents=True)
    shutil.copyfile(wheel, hop)
    task = {
        "name": "train",
        "run": "true",
        "envs": {"SKYGUARD_WHEEL": wheel.name, "SKYGUARD_STATE_ROOT": "/nonexistent-bucket"},
        "secrets": {"SKYGUARD_DISCORD_WEBHOOK_URL": url},
        "file_mounts": {f"{NODE_DIR}/{wheel.name}": str(hop)},
    }
    stored = subprocess.run(
        [python, "-c", _STORE_JOB, json.dumps(task)],
        cwd=home,
        env={"PATH": "/usr/bin:/bin", "HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert stored.returncode == 0, stored.stderr[-2000:]
    job_id = stored.stdout.split()[-1]
    env = {
        "JOB_ID": job_id,
        "TASK_ID": "0",
        "SKYPILOT_TASK_ID": f"sky-managed-2026-01-02-03-04-05-123456_train_{job_id}-0",
        "CLUSTER_NAME": f"train-{job_id}",
        **{k: v for k, v in task["envs"].items()},
    }
    started = run_callback(python, home, {**env, "JOB_STATUS": "STARTING"})
    assert "skyguard notify-event: STARTING: nothing to tell" in started.stdout, started.stderr
    # The job ends: SkyPilot's cleanup removes its copy before the CANCELLED callback.
    hop.unlink()
    cancelled = run_callback(python, home, {**env, "JOB_STATUS": "CANCELLED"})
    assert "CANCELLED -> cancelled/signalled: discord: sent" in cancelled.stdout, (
        cancelled.stdout + cancelled.stderr[-3000:]
    )
    assert webhook_token not in cancelled.stdout + cancelled.stderr
    assert len(server.requests) == 1
    assert (home / ".skyguard" / "controller" / "wheels" / job_id / wheel.name).is_file()


def test_no_shipped_wheel_in_the_record_is_one_line(tmp_path: Path) -> None:
    python = skypilot_only_python(tmp_path)
    home = tmp_path / "controller-home"
    home.mkdir()
    result = run_callback(
        python,
        home,
        {"JOB_STATUS": "CANCELLED", "JOB_ID": "41", "TASK_ID": "0", "SKYGUARD_WHEEL": "x.whl"},
    )
    assert result.returncode == 0
    assert result.stdout == ""
    assert result.stderr.splitlines()[-1] == (
        "skyguard notify-event: no shipped skyguard wheel for job 41 here (LookupError): "
        "nothing sent for CANCELLED"
    )
    assert "Traceback" not in result.stderr


def test_requirements_the_python_lacks_are_named(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    wanted = bootstrap.requirements(wheel)
    assert {w.split(">")[0] for w in wanted} == {"requests", "tenacity", "psutil"}
    assert bootstrap.missing(wanted) == []
    assert bootstrap.missing(["surely-not-installed-skyguard-dep>=1"]) == [
        "surely-not-installed-skyguard-dep>=1"
    ]


@pytest.mark.parametrize("content", [b"not a zip", b""])
def test_an_unreadable_wheel_is_one_line(content: bytes, tmp_path: Path) -> None:
    broken = tmp_path / "skyguard-0-py3-none-any.whl"
    broken.write_bytes(content)
    problem = bootstrap.ensure_requirements(broken, tmp_path / "lib")
    assert problem == f"cannot read the shipped wheel {broken.name}: BadZipFile"


def tiny_wheel(folder: Path, name: str, requires: str = "", module: str = "") -> Path:
    """A minimal pure-Python wheel pip accepts."""
    info = f"{name.replace('-', '_')}-1.0.dist-info"
    path = folder / f"{name.replace('-', '_')}-1.0-py3-none-any.whl"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n"
    if requires:
        meta += f"Requires-Dist: {requires}\nRequires-Dist: wandb>=0.18; extra == 'wandb'\n"
    files = {
        f"{info}/METADATA": meta,
        f"{info}/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    if module:
        files[f"{module}.py"] = "VALUE = 1\n"
    files[f"{info}/RECORD"] = "".join(f"{n},,\n" for n in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(path, "w") as archive:
        for entry, text in files.items():
            archive.writestr(entry, text)
    return path


def offline_python(check: str, home: Path, index: Path) -> subprocess.CompletedProcess[str]:
    """Run ``check`` in this Python with pip offline: packages come only from ``index``."""
    return subprocess.run(
        [sys.executable, "-c", check],
        cwd=ROOT,
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(home),
            "PIP_NO_INDEX": "1",
            "PIP_FIND_LINKS": str(index),
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_requirement_the_controller_lacks_is_installed_beside_it(tmp_path: Path) -> None:
    """tenacity on a real controller: pip puts it into skyguard's own directory, which
    comes after SkyPilot's packages on sys.path (an offline index stands in for PyPI)."""
    index = tmp_path / "index"
    index.mkdir()
    tiny_wheel(index, "skyguard-test-dep", module="skyguard_test_dep")
    shipped = tiny_wheel(tmp_path, "skyguard", requires="skyguard-test-dep>=1")
    lib = tmp_path / "lib"
    check = (
        "import sys; from pathlib import Path; from devops.skypilot.controller import bootstrap\n"
        f"print(bootstrap.ensure_requirements(Path({str(shipped)!r}), Path({str(lib)!r})))\n"
        "import skyguard_test_dep; print(skyguard_test_dep.__file__)\n"
        f"print(sys.path.index({str(lib)!r}) == len(sys.path) - 1)\n"
    )
    result = offline_python(check, tmp_path, index)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == ["None", str(lib / "skyguard_test_dep.py"), "True"]


_RECOVERING = """
import asyncio, sys
from sky.jobs import state
code = sys.argv[2] or None
asyncio.run(state.add_job_event_async(int(sys.argv[1]), 0, state.ManagedJobStatus.RECOVERING,
                                      "recovering", code))
"""


@pytest.mark.parametrize(
    ("code", "says"),
    [
        # The runner exited 75: it announced its retry itself, and the bucket that holds
        # its sent-log is not visible here, so the controller says nothing more.
        ("USER_JOB_FAILURE", "RECOVERING_ON_EXIT_CODE: retrying: the runner reports this end"),
        # No code: a preempted or failed node; no runner could say it.
        ("", "RECOVERING -> retrying/node_lost: discord: sent"),
    ],
)
def test_recovering_tells_the_runners_retry_from_a_lost_node(
    code: str, says: str, serve: Serve, webhook_token: str, tmp_path: Path
) -> None:
    server = serve([discord_ok])
    url = webhook_url(server, webhook_token)
    home = tmp_path / "controller-home"
    home.mkdir()
    bare = {"PATH": "/usr/bin:/bin", "HOME": str(home)}
    task = {"name": "train", "run": "true", "secrets": {"SKYGUARD_DISCORD_WEBHOOK_URL": url}}
    stored = subprocess.run(
        [sys.executable, "-c", _STORE_JOB, json.dumps(task)],
        cwd=home,
        env=bare,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    job_id = stored.stdout.split()[-1]
    subprocess.run(
        [sys.executable, "-c", _RECOVERING, job_id, code],
        cwd=home,
        env=bare,
        timeout=120,
        check=True,
    )
    result = subprocess.run(
        [sys.executable, "-m", "devops.skypilot", "notify-event"],
        cwd=ROOT,
        env={
            **bare,
            "JOB_STATUS": "RECOVERING",
            "JOB_ID": job_id,
            "TASK_ID": "0",
            "SKYPILOT_TASK_ID": f"sky-managed-2026-01-02-03-04-05-123456_train_{job_id}-0",
            "SKYGUARD_STATE_ROOT": str(tmp_path / "bucket-only-the-nodes-mount"),
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"skyguard notify-event: {says}" in result.stdout, result.stdout
    assert len(server.requests) == (0 if code else 1)


def test_a_requirement_pip_cannot_get_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "index").mkdir()
    shipped = tiny_wheel(tmp_path, "skyguard", requires="skyguard-test-absent>=1")
    lib = tmp_path / "lib"
    check = (
        "from pathlib import Path; from devops.skypilot.controller import bootstrap\n"
        f"print(bootstrap.ensure_requirements(Path({str(shipped)!r}), Path({str(lib)!r})))\n"
    )
    result = offline_python(check, tmp_path, tmp_path / "index")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == [
        f"cannot install skyguard-test-absent>=1 for skyguard into {lib} "
        "(pip exited 1; the controller needs the package index)"
    ]
