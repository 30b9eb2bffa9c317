"""What notifications add to the runner's exit: `python benchmarks/notifications_overhead.py`.

Runs ``skyguard run -- <command that exits 0 at once>`` with

(a) no notifications configured (the baseline; (a') is the same for a command
    that runs 3 s, the baseline of (c')),
(b) Discord + Slack + GitHub pointed at healthy loopback servers,
(c) Discord + Slack + GitHub + W&B offline, into a real offline run that a separate
    "training" process created with ``wandb.init(mode="offline", id=...)``; skyguard
    adds its records to that run's log (no ``import wandb``),
(c') as (c), but the command runs 3 s first: what a real, long job pays,
(e) W&B offline alone (the other channels unconfigured): W&B's own share,
(d) Discord + Slack + GitHub pointed at a server that accepts and never answers, with
    ``SKYGUARD_NOTIFY_DEADLINE=3s``: the cost must be the deadline, not
    tries x (connect + read timeout).

Measured from outside: the command prints ``time.monotonic()`` (one clock for
every process on Linux) as it exits, the harness notes when the runner process
exits. The overhead of a scenario is (runner exit - command exit) minus the
median of the same for its baseline. Scenarios are interleaved within each
repeat so background load hits them alike. Every trial checks the delivery
lines the runner logged (a channel that did not send makes the run fail).
Writes ``benchmarks/results/notifications_overhead.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
from skyguard_run import runner_argv

from devops.skypilot.node.state import write_json_atomic

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "notifications_overhead.json"

#: Every process a trial starts inherits it; whatever still carries it afterwards is killed.
TAG_VAR = "SKYGUARD_BENCHMARK_PROCESS_TAG"
#: Variables of the caller's shell that would change what the runner does.
FOREIGN_PREFIXES = ("SKYGUARD_", "SKYPILOT_", "WANDB_", "GITHUB_")
GITHUB_REPO = "octo/trainer"
GITHUB_TOKEN = "ghp_" + "b" * 36
COMMIT = "0123456789abcdef0123456789abcdef01234567"
WEBHOOK_PATH = "/api/webhooks/112233445566778899/benchmark-webhook-token"
SLACK_PATH = "/services/T0000BENCH/B0000BENCH/benchmarkslacktoken0001"
RUN_ID = "skyguardbench01"
DEAD_DEADLINE = 3.0
#: A trial that takes longer than this is stuck: it is killed and the benchmark fails.
TRIAL_TIMEOUT = 120.0

EXIT_AT_ONCE = "import time; print('T exit', time.monotonic(), flush=True)"
EXIT_AFTER_3S = "import time; time.sleep(3); print('T exit', time.monotonic(), flush=True)"
TRAINING = """
import sys, wandb
run = wandb.init(mode="offline", id=sys.argv[1], project="skyguard-bench", dir=sys.argv[2],
                 settings=wandb.Settings(console="off", silent=True))
run.log({"loss": 1.5})
run.finish()
"""
DELIVERY = re.compile(r"notification (\S+): (discord|slack|github|wandb): (sent|skipped|failed)")


# --- loopback endpoints --------------------------------------------------------------------


class HealthyEndpoint:
    """Answers like Discord's and Slack's webhooks and GitHub's statuses API."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                endpoint.requests.append(self.path)
                if self.path.startswith("/api/webhooks/"):
                    # Discord with ?wait=true: the stored message.
                    status, body = 200, b'{"id": "1", "type": 0}'
                elif self.path.startswith("/services/"):
                    status, body = 200, b"ok"  # Slack's incoming webhooks
                elif self.headers.get("Authorization") != f"Bearer {GITHUB_TOKEN}":
                    status, body = 401, b'{"message": "Bad credentials"}'
                elif self.path == f"/repos/{GITHUB_REPO}/statuses/{COMMIT}":
                    status, body = 201, b'{"state": "success"}'
                else:
                    status, body = 404, b'{"message": "Not Found"}'
                self.send_response(status)
                if body:
                    kind = "text/html" if body == b"ok" else "application/json"
                    self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Silent: the default prints every request to stderr."""

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


class DeadEndpoint:
    """Accepts every connection and never answers: the worst kind of outage."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.server.settimeout(0.05)
        self.held: list[socket.socket] = []
        self._stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                connection, _ = self.server.accept()
                self.held.append(connection)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.getsockname()[1]}"

    def stop(self) -> None:
        self._stopping.set()
        self.thread.join(5)
        for connection in self.held:
            connection.close()
        self.server.close()


# --- processes -----------------------------------------------------------------------------


def base_env(tag: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN_PREFIXES)}
    env.update({TAG_VAR: tag, "PYTHONPATH": str(REPO), "NO_PROXY": "127.0.0.1,localhost"})
    return env


def kill_tagged(tag: str) -> None:
    """SIGKILL every live process carrying ``tag``."""
    for process in psutil.process_iter():
        if _has_tag(process, tag):
            with contextlib.suppress(psutil.Error):
                process.kill()


@contextlib.contextmanager
def tagged(tag: str) -> Iterator[None]:
    """Whatever a block starts with ``tag`` in its environment is gone when it ends."""
    try:
        yield
    finally:
        kill_tagged(tag)


@dataclass(frozen=True)
class Trial:
    #: Runner exit minus command exit, seconds.
    exit_gap: float
    #: channel -> sent / skipped / failed, for the end-of-job event.
    deliveries: dict[str, str]
    lingering: list[int] = field(default_factory=list)


def run_trial(tmp: Path, command: str, extra_env: Mapping[str, str]) -> Trial:
    tag = uuid.uuid4().hex
    env = {**base_env(tag), **extra_env}
    argv = [*runner_argv(tmp / "state"), sys.executable, "-c", command]
    stdout_path, stderr_path = tmp / "runner.out", tmp / "runner.err"
    with (
        tagged(tag),
        stdout_path.open("wb") as stdout,
        stderr_path.open("wb") as stderr,
    ):
        # Files, not pipes: a helper the runner leaves behind must not hold our read open.
        process = subprocess.Popen(argv, env=env, stdout=stdout, stderr=stderr, cwd=tmp)
        try:
            code = process.wait(timeout=TRIAL_TIMEOUT)
            ended = time.monotonic()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        # Anything still carrying the tag outlived the runner (reported, then killed).
        lingering = [
            p.pid
            for p in psutil.process_iter()
            if _has_tag(p, tag) and p.pid != process.pid and not _is_zombie(p)
        ]
    out, err = stdout_path.read_text(), stderr_path.read_text()
    marks = {
        parts[1]: float(parts[2])
        for parts in (line.split() for line in out.splitlines())
        if len(parts) == 3 and parts[0] == "T"
    }
    if code != 0 or "exit" not in marks:
        raise RuntimeError(f"runner exited {code} without the command's mark:\n{err[-3000:]}")
    deliveries = {
        channel: status
        for phase, channel, status in DELIVERY.findall(err)
        if phase.startswith("succeeded")
    }
    return Trial(ended - marks["exit"], deliveries, lingering)


def _has_tag(process: psutil.Process, tag: str) -> bool:
    try:
        return process.environ().get(TAG_VAR) == tag
    except psutil.Error:
        return False


def _is_zombie(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def make_training_run(directory: Path) -> None:
    """The job's own offline W&B run, written by another process as training code would."""
    tag = uuid.uuid4().hex
    env = {**base_env(tag), "WANDB_SILENT": "true"}
    with tagged(tag):
        subprocess.run(
            [sys.executable, "-c", TRAINING, RUN_ID, str(directory)],
            env=env,
            check=True,
            timeout=TRIAL_TIMEOUT,
            capture_output=True,
        )


# --- scenarios -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    key: str
    name: str
    command: str
    #: Given the trial's tmp dir, the environment that configures notifications.
    env: Callable[[Path], dict[str, str]]
    #: What each channel must have done with the end-of-job event.
    expect: dict[str, str]
    #: Key of the scenario whose median exit gap is subtracted.
    baseline: str
    target: str = ""


def http_env(discord_url: str, github_url: str, **extra: str) -> dict[str, str]:
    return {
        "SKYGUARD_DISCORD_WEBHOOK_URL": discord_url + WEBHOOK_PATH,
        "SKYGUARD_SLACK_WEBHOOK_URL": discord_url + SLACK_PATH,
        "SKYGUARD_GITHUB_TOKEN": GITHUB_TOKEN,
        "SKYGUARD_GITHUB_REPO": GITHUB_REPO,
        "SKYGUARD_GITHUB_API_URL": github_url,
        "SKYGUARD_GIT_COMMIT": COMMIT,
        **extra,
    }


def scenarios(
    discord: HealthyEndpoint, github: HealthyEndpoint, dead: DeadEndpoint, trained: Path | None
) -> list[Scenario]:
    healthy = http_env(discord.url, github.url)

    def wandb_only(tmp: Path) -> dict[str, str]:
        assert trained is not None
        # A fresh copy per trial: each trial adds its records to the training run's log.
        shutil.copytree(trained / "wandb", tmp / "wandb")
        return {
            "WANDB_MODE": "offline",
            "WANDB_DIR": str(tmp),
            "WANDB_RUN_ID": RUN_ID,
            "WANDB_PROJECT": "skyguard-bench",
            "WANDB_SILENT": "true",
        }

    def with_wandb(tmp: Path) -> dict[str, str]:
        return {**healthy, **wandb_only(tmp)}

    # A skipped (unconfigured) channel is logged only at debug level: it shows no line.
    none: dict[str, str] = {}
    both = {"discord": "sent", "slack": "sent", "github": "sent"}
    all_three = {**both, "wandb": "sent"}
    listed = [
        Scenario("a", "(a) no notifications configured", EXIT_AT_ONCE, lambda _: {}, none, "a"),
        Scenario(
            "a3", "(a') no notifications, command runs 3 s", EXIT_AFTER_3S, lambda _: {}, none, "a3"
        ),
        Scenario(
            "b",
            "(b) Discord + Slack + GitHub, healthy loopback",
            EXIT_AT_ONCE,
            lambda _: dict(healthy),
            both,
            "a",
            "< 0.3 s",
        ),
    ]
    if trained is not None:
        listed += [
            Scenario(
                "e",
                "(e) W&B offline alone, command exits at once",
                EXIT_AT_ONCE,
                wandb_only,
                {"wandb": "sent"},
                "a",
                "< 0.3 s",
            ),
            Scenario(
                "c",
                "(c) Discord + Slack + GitHub + W&B offline, command exits at once",
                EXIT_AT_ONCE,
                with_wandb,
                all_three,
                "a",
                "< 0.3 s",
            ),
            Scenario(
                "c3",
                "(c') Discord + Slack + GitHub + W&B offline, command runs 3 s",
                EXIT_AFTER_3S,
                with_wandb,
                all_three,
                "a3",
                "< 0.3 s",
            ),
        ]
    listed.append(
        Scenario(
            "d",
            f"(d) Discord + Slack + GitHub dead (never answer), deadline {DEAD_DEADLINE:g} s",
            EXIT_AT_ONCE,
            lambda _: http_env(dead.url, dead.url, SKYGUARD_NOTIFY_DEADLINE=f"{DEAD_DEADLINE:g}s"),
            {"discord": "failed", "slack": "failed", "github": "failed"},
            "a",
            f"= {DEAD_DEADLINE:g} s (not 3 tries x 13 s)",
        )
    )
    return listed


def offline_send_costs(trained: Path, root: Path, repeats: int) -> list[float]:
    """CPU seconds of one offline W&B send, measured in this process: the exit gaps
    above are wall time on a shared machine, CPU time barely moves with its load."""
    from devops.skypilot.common.lifecycle import Phase
    from devops.skypilot.common.termination import TerminationReason
    from notifications.channels.wandb import WandbNotifier, WandbSettings
    from notifications.notifier import Event, Level

    event = Event(
        job_name="bench",
        task_id="bench-task",
        phase=Phase.FAILED,
        reason=TerminationReason.JOB_FAILED,
        exit_code=1,
        detail="command exited 1",
        level=Level.ERROR,
    )
    costs = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            shutil.copytree(trained / "wandb", Path(tmp) / "wandb")
            settings = WandbSettings(run_id=RUN_ID, mode="offline", directory=Path(tmp))
            started = time.process_time()
            delivery = WandbNotifier(settings).send(event)
            costs.append(time.process_time() - started)
        if not delivery.ok:
            raise RuntimeError(f"offline W&B send: {delivery.line()}")
    return costs


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-wandb", action="store_true", help="leave out (c), (c') and (e)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    try:
        import wandb  # noqa: F401 - only whether it is there
    except ImportError:
        args.no_wandb = True
        print("wandb is not installed: (c), (c') and (e) are left out", file=sys.stderr)

    discord, github, dead = HealthyEndpoint(), HealthyEndpoint(), DeadEndpoint()
    gaps: dict[str, list[float]] = {}
    send_costs: list[float] = []
    lingering: dict[str, int] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="skyguard-bench-") as root:
            trained = None
            if not args.no_wandb:
                trained = Path(root) / "trained"
                make_training_run(trained)
            chosen = scenarios(discord, github, dead, trained)
            for repeat in range(args.repeats):
                for scenario in chosen:
                    with tempfile.TemporaryDirectory(dir=root) as tmp:
                        env = scenario.env(Path(tmp))
                        trial = run_trial(Path(tmp), scenario.command, env)
                    if trial.deliveries != scenario.expect:
                        raise RuntimeError(
                            f"{scenario.name}: deliveries {trial.deliveries}, "
                            f"expected {scenario.expect}"
                        )
                    gaps.setdefault(scenario.key, []).append(trial.exit_gap)
                    lingering[scenario.key] = lingering.get(scenario.key, 0) + len(trial.lingering)
                print(f"repeat {repeat + 1}/{args.repeats} done", file=sys.stderr)
            send_costs = offline_send_costs(trained, Path(root), args.repeats) if trained else []
    finally:
        for endpoint in (discord, github, dead):
            endpoint.stop()

    rows: list[dict[str, Any]] = []
    for scenario in chosen:
        raw = gaps[scenario.key]
        if scenario.key == scenario.baseline:
            row = {"name": f"{scenario.name}: command exit -> runner exit", **summary(raw)}
        else:
            base = statistics.median(gaps[scenario.baseline])
            row = {
                "name": f"{scenario.name}: added to the exit",
                **summary([value - base for value in raw]),
            }
        row.update(target=scenario.target, raw=raw, lingering_processes=lingering[scenario.key])
        rows.append(row)
    if send_costs:
        name = "(e') the W&B offline send itself, CPU time in this process"
        rows.append({"name": name, **summary(send_costs), "target": "< 0.3 s", "raw": send_costs})
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        ),
        "load_average_1m": os.getloadavg()[0],
        "repeats": args.repeats,
        "rows": rows,
    }
    write_json_atomic(RESULTS, result)
    print(
        f"Notification overhead at the runner's exit ({result['date']}, {result['machine']}, "
        f"load {result['load_average_1m']:.1f})\n"
    )
    print("| measure (s) | median | min | max | n | target |\n|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['name']} | {row['median']:.3f} | {row['min']:.3f} | {row['max']:.3f} "
            f"| {row['n']} | {row['target']} |"
        )
    leftovers = {key: count for key, count in lingering.items() if count}
    if leftovers:
        print(f"\nprocesses that outlived the runner (killed): {leftovers}")
    return 0


if __name__ == "__main__":
    # SIGTERM (a CI timeout) runs the finally blocks: no runner or server is left behind.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sys.exit(main())
