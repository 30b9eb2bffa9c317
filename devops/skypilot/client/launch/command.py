"""``skyguard launch``: submit a supervised job to SkyPilot with one command.

    skyguard launch --gpus H100:8 --heartbeat-timeout 10m -- python train.py

Client side. ``sky`` is imported lazily, inside the functions that talk to
SkyPilot (:mod:`.task`, :mod:`.submit`), so ``--help`` and every input error
answer before SkyPilot is even loaded. The task comes from a recipe (:mod:`.recipes`); flags
fill in its ``envs``, ``secrets`` and resources. By default the job is a managed
job (SkyPilot restarts it when the runner exits 75); ``--cluster NAME`` runs it
with a plain ``sky launch`` instead.

Quiet by default: stdout gets only the job id, one per line, so the command
composes in scripts; ``--verbose`` shows SkyPilot's progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from devops.skypilot.client.launch.request import (
    GPUS_ENV,
    KNOBS,
    NODES_ENV,
    STATE_BUCKET_ENV,
    LaunchError,
    LaunchRequest,
    build_request,
    load_recipe,
)
from devops.skypilot.client.launch.submit import follow, quiet_libraries, sky_message, submit
from devops.skypilot.client.launch.task import render, task_configs, validate_with_sky
from devops.skypilot.common.packages import DOCS, repo_hides_heartbeat
from devops.skypilot.common.termination import EXIT_CONFIG_ERROR

# ---------------------------------------------------------------- arguments

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``skyguard launch``'s flags (no SkyPilot import)."""
    job = parser.add_argument_group("job")
    job.add_argument(
        "--name",
        "--run-id",
        dest="name",
        metavar="NAME",
        help="run id and managed-job name (letters, digits, . _ -; starts with a letter) "
        "[default: <user>-<timestamp>]",
    )
    job.add_argument(
        "--recipe",
        metavar="YAML",
        help="task recipe [default: <workdir>/.skyguard/job.yaml (skyguard init), else the "
        "recipe that ships with skyguard]",
    )
    job.add_argument(
        "--workdir", metavar="DIR", help="directory synced to the nodes [default: git top level]"
    )
    job.add_argument("--copies", default="1", metavar="N", help="launch N copies, each its own run")
    job.add_argument(
        "--cluster",
        metavar="NAME",
        help="plain `sky launch` on this cluster instead of a managed job (no recovery)",
    )
    res = parser.add_argument_group("resources")
    res.add_argument(
        "--gpus", metavar="TYPE[:N]", help=f"accelerators, e.g. H100:8 (env {GPUS_ENV})"
    )
    res.add_argument("--nodes", metavar="N", help=f"number of nodes (env {NODES_ENV})")
    res.add_argument("--cpus", metavar="N[+]", help="vCPUs per node, e.g. 8 or 8+")
    res.add_argument("--memory", metavar="GB[+]", help="memory per node in GB, e.g. 32+")
    res.add_argument(
        "--infra", metavar="INFRA", help="where to run: aws, gcp/us-central1, slurm, k8s"
    )
    res.add_argument(
        "--spot",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="use spot instances (--no-spot: on-demand) [default: the recipe's]",
    )
    run = parser.add_argument_group("runner")
    for knob in KNOBS:
        run.add_argument(knob.flag, metavar="DUR", help=f"{knob.help} (env {knob.env})")
    run.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="K=V",
        help="set a task env var; K alone takes the local value (repeatable)",
    )
    run.add_argument(
        "--env-file",
        metavar="PATH",
        help="task env vars from a dotenv file (KEY=VALUE lines); --env wins over it",
    )
    run.add_argument(
        "--secret",
        action="append",
        default=[],
        metavar="K",
        help="send the local env var K as a SkyPilot secret, redacted everywhere (repeatable)",
    )
    state = parser.add_argument_group("state (must survive a recovery)")
    state.add_argument(
        "--state-bucket",
        metavar="NAME",
        help=f"bucket mounted for runner state (env {STATE_BUCKET_ENV})",
    )
    state.add_argument(
        "--state-root",
        metavar="PATH",
        help="use this path shared by every node (Slurm home, NFS) instead of a bucket mount",
    )
    git = parser.add_argument_group("git")
    git.add_argument("--git-ref", metavar="REF", help="run this pushed commit [default: HEAD]")
    git.add_argument(
        "--skip-git-check",
        action="store_true",
        help="launch even if the tree is dirty or the commit is not pushed",
    )
    out = parser.add_argument_group("output")
    out.add_argument(
        "--dry-run",
        action="store_true",
        help="print the final task YAML (secrets redacted) and submit nothing",
    )
    out.add_argument(
        "--dump-config",
        choices=("json", "yaml"),
        help="print the final task config in this format (secrets redacted) and exit",
    )
    out.add_argument("--confirm", action="store_true", help="ask before submitting")
    out.add_argument("--verbose", "-v", action="store_true", help="show SkyPilot's progress")
    out.add_argument("--follow", action="store_true", help="stream the job's logs after submitting")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")


# ---------------------------------------------------------------- main


def summary(request: LaunchRequest, configs: Sequence[Mapping[str, Any]]) -> str:
    first = configs[0]
    mode = f"sky launch on cluster {request.cluster}" if request.cluster else "managed job"
    resources = json.dumps(first.get("resources", {}))
    bucket = first["envs"].get(STATE_BUCKET_ENV, "")
    lines = [
        f"run:       {', '.join(str(c['name']) for c in configs)}",
        f"command:   {shlex.join(request.command)}",
        f"mode:      {mode}",
        f"commit:    {request.git_commit or '(not checked)'}",
        f"resources: {resources} x {first.get('num_nodes', 1)} node(s)",
        f"state:     {request.state_root or 'bucket ' + bucket}",
        f"secrets:   {', '.join(sorted(request.secrets)) or '(none)'}",
    ]
    return "\n".join(lines)


def _confirm(stream: IO[str]) -> bool:
    print("Launch? [y/N] ", end="", file=sys.stderr, flush=True)
    answer = stream.readline()
    return answer.strip().lower() in ("y", "yes")


def run(args: argparse.Namespace, environ: Mapping[str, str], cwd: Path) -> int:
    request = build_request(args, environ, cwd)
    hiding = (
        repo_hides_heartbeat(Path(request.workdir)) if isinstance(request.workdir, str) else None
    )
    if hiding is not None:
        print(
            f"skyguard launch: warning: {hiding} hides skyguard's 'devops' from code run in the "
            f"workdir (`from devops.skypilot import heartbeat` fails there): see {DOCS}",
            file=sys.stderr,
        )
    configs = task_configs(request, load_recipe(request.recipe))
    if args.dry_run or args.dump_config:
        validate_with_sky(configs)
        print(
            render(configs, args.dump_config or "yaml"),
            end="" if args.dump_config != "json" else "\n",
        )
        if args.dry_run:
            print(summary(request, configs), file=sys.stderr)
        return 0
    tasks = validate_with_sky(configs)
    if args.verbose or args.confirm:
        print(summary(request, configs), file=sys.stderr)
    if args.confirm and not _confirm(sys.stdin):
        print("skyguard launch: not launched", file=sys.stderr)
        return 1
    submitted = []
    for task, config in zip(tasks, configs, strict=True):
        job = submit(task, str(config["name"]), request.cluster, args.verbose)
        submitted.append(job)
        print(job.job_id, flush=True)
        if args.verbose:
            where = f"cluster {job.cluster}" if job.cluster else "managed job"
            print(f"skyguard launch: {job.name} submitted as {where} {job.job_id}", file=sys.stderr)
    if args.follow:
        return max(follow(job) for job in submitted)
    return 0


def main(args: argparse.Namespace) -> int:
    """``skyguard launch``: 0 submitted, 2 bad input, 1 SkyPilot refused or failed."""
    quiet_libraries(args.verbose)
    try:
        return run(args, os.environ, Path.cwd())
    except LaunchError as error:
        print(f"skyguard launch: error: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except KeyboardInterrupt:
        print("skyguard launch: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # SkyPilot's errors: no cloud access, quota, bad YAML, ...
        logger.debug("launch failed", exc_info=True)
        print(f"skyguard launch: error: {sky_message(error)}", file=sys.stderr)
        return 1
