"""``skyguard launch``: submit a supervised job to SkyPilot with one command.

    skyguard launch --gpus H100:8 --heartbeat-timeout 10m -- python train.py

Client side, and the only module that imports ``sky``: lazily, inside the
functions that talk to SkyPilot, so ``--help`` and every input error answer
before SkyPilot is even loaded. The task comes from ``recipes/job.yaml``; flags
fill in its ``envs``, ``secrets`` and resources. By default the job is a managed
job (SkyPilot restarts it when the runner exits 75); ``--cluster NAME`` runs it
with a plain ``sky launch`` instead.

Quiet by default: stdout gets only the job id, one per line, so the command
composes in scripts; ``--verbose`` shows SkyPilot's progress on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import getpass
import io
import json
import logging
import os
import re
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from devops.skypilot.config import ConfigError, parse_count, parse_duration
from devops.skypilot.git_state import GitCheckError, workdir_source
from devops.skypilot.termination import EXIT_CONFIG_ERROR

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: SkyPilot's own name rules (``sky.skylet.constants.CLUSTER_NAME_VALID_REGEX`` for
#: the cluster a managed job runs on, and ``sky.task._VALID_NAME_REGEX`` for the
#: job); a name must satisfy both. Copied so a bad name fails before ``sky`` loads;
#: a test keeps them equal to SkyPilot's.
CLUSTER_NAME_REGEX = r"[a-zA-Z]([-_.a-zA-Z0-9]*[a-zA-Z0-9])?"
TASK_NAME_REGEX = r"[a-zA-Z0-9]+(?:[._-]{1,2}[a-zA-Z0-9]+)*"
#: ``sky.utils.common_utils._VALID_ENV_VAR_REGEX``.
ENV_NAME_REGEX = r"[a-zA-Z_][a-zA-Z0-9_]*"
_GPU_SPEC = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*(:\d+(\.\d+)?)?")
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

#: Envs the recipe reads that only ``launch`` may set (from the positional
#: command and ``--name``), so an ``--env`` cannot contradict them.
RESERVED_ENVS = ("SKYGUARD_CMD", "SKYGUARD_RUN_ID", "SKYGUARD_JOB_NAME", "SKYGUARD_GIT_COMMIT")
#: Recipe envs that are defaults for launch's resource flags (SkyPilot does not
#: substitute envs into ``resources``, so ``launch`` applies them).
GPUS_ENV = "SKYGUARD_GPUS"
NODES_ENV = "SKYGUARD_NODES"
STATE_ROOT_ENV = "SKYGUARD_STATE_ROOT"
STATE_BUCKET_ENV = "SKYGUARD_STATE_BUCKET"
REDACTED = "<redacted>"
#: How long a submitted job may take to show up in the queue.
REGISTRATION_TIMEOUT = 120.0


class LaunchError(Exception):
    """A problem with what the user asked for, or with SkyPilot's answer: one line."""


@dataclass(frozen=True)
class Knob:
    """A launch flag that becomes a runner env var (validated here, read by the runner)."""

    flag: str
    env: str
    parse: Callable[[str], object]
    help: str


KNOBS: tuple[Knob, ...] = (
    Knob("--heartbeat-timeout", "SKYGUARD_HEARTBEAT_TIMEOUT", parse_duration, "hang = no beat"),
    Knob("--max-runtime", "SKYGUARD_MAX_RUNTIME", parse_duration, "budget over all attempts"),
    Knob("--grace", "SKYGUARD_GRACE", parse_duration, "SIGTERM to SIGKILL grace"),
)


@dataclass(frozen=True)
class LaunchRequest:
    """What the user asked for, checked, before anything talks to SkyPilot."""

    command: tuple[str, ...]
    name: str
    copies: int
    recipe: Path
    workdir: str | Mapping[str, str]
    envs: Mapping[str, str]
    #: Values read from the local environment; never printed.
    secrets: Mapping[str, str] = field(repr=False)
    resources: Mapping[str, Any]
    num_nodes: int | None
    state_root: str | None
    cluster: str | None
    git_commit: str | None


@dataclass(frozen=True)
class Submitted:
    name: str
    job_id: int
    cluster: str | None


# ---------------------------------------------------------------- arguments


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
        "--recipe", metavar="YAML", help="task recipe [default: <workdir>/recipes/job.yaml]"
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


# ---------------------------------------------------------------- validation (no sky)


def check_name(name: str, what: str = "--name") -> str:
    if not (re.fullmatch(CLUSTER_NAME_REGEX, name) and re.fullmatch(TASK_NAME_REGEX, name)):
        raise LaunchError(
            f"{what} {name!r} is not a valid SkyPilot name: use letters, digits and single "
            ". _ - between them, starting with a letter and ending with a letter or digit"
        )
    return name


def default_name(now: float | None = None) -> str:
    user = re.sub(r"[^a-zA-Z0-9]+", "-", getpass.getuser()).strip("-") or "user"
    if not user[0].isalpha():
        user = f"u{user}"
    return f"{user}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}"


def parse_env_items(items: Sequence[str], environ: Mapping[str, str]) -> dict[str, str]:
    """``--env K=V`` / ``--env K`` (local value) -> dict; bad names and reserved keys raise."""
    envs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not re.fullmatch(ENV_NAME_REGEX, key):
            raise LaunchError(f"--env {item!r}: {key!r} is not a valid variable name")
        if key in RESERVED_ENVS:
            raise LaunchError(
                f"--env {key}: set by skyguard launch itself (use --name / the command)"
            )
        if not sep:
            if key not in environ:
                raise LaunchError(
                    f"--env {key}: not set in the local environment (use {key}=VALUE)"
                )
            value = environ[key]
        if key in envs:
            raise LaunchError(f"--env {key} given twice")
        envs[key] = value
    return envs


def read_env_file(path: Path) -> dict[str, str]:
    """A dotenv file: ``KEY=VALUE`` lines, ``#`` comments, optional ``export`` and quotes."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise LaunchError(f"--env-file {path}: {error.strerror}") from None
    envs: dict[str, str] = {}
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not re.fullmatch(ENV_NAME_REGEX, key):
            raise LaunchError(f"--env-file {path}:{number}: expected KEY=VALUE")
        if key in RESERVED_ENVS:
            raise LaunchError(f"--env-file {path}:{number}: {key} is set by skyguard launch")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        envs[key] = value
    return envs


def read_secrets(names: Sequence[str], environ: Mapping[str, str]) -> dict[str, str]:
    """``--secret K``: the value comes from the local environment, never the command line."""
    secrets: dict[str, str] = {}
    for name in names:
        if "=" in name:
            key = name.partition("=")[0]
            raise LaunchError(
                f"--secret {key}=...: pass only the name; the value is read from the local "
                "environment so it never shows in shell history or ps"
            )
        if not re.fullmatch(ENV_NAME_REGEX, name):
            raise LaunchError(f"--secret {name!r} is not a valid variable name")
        value = environ.get(name)
        if not value:
            raise LaunchError(f"--secret {name}: not set (or empty) in the local environment")
        secrets[name] = value
    return secrets


def _knob_envs(args: argparse.Namespace) -> dict[str, str]:
    envs: dict[str, str] = {}
    for knob in KNOBS:
        value = getattr(args, knob.env.removeprefix("SKYGUARD_").lower())
        if value is None:
            continue
        try:
            knob.parse(value)
        except ConfigError as error:
            raise LaunchError(f"{knob.flag}: {error}") from None
        envs[knob.env] = value
    return envs


def _count(flag: str, value: str, minimum: int = 1) -> int:
    try:
        count = parse_count(value)
    except ConfigError as error:
        raise LaunchError(f"{flag}: {error}") from None
    if count < minimum:
        raise LaunchError(f"{flag}: must be at least {minimum}")
    return count


# ---------------------------------------------------------------- the task config


def load_recipe(path: Path) -> dict[str, Any]:
    import yaml  # type: ignore[import-untyped,unused-ignore]  # PyYAML: via the launch extra

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise LaunchError(f"cannot read recipe {path}: {error.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise LaunchError(f"recipe {path} is not valid YAML: {_one_line(str(error))}") from None
    if not isinstance(data, dict):
        raise LaunchError(f"recipe {path} is not a YAML mapping")
    return data


def _check_state_flags(args: argparse.Namespace) -> None:
    if args.state_root is not None and args.state_bucket is not None:
        raise LaunchError("--state-root and --state-bucket exclude each other")
    if args.state_root is not None and not args.state_root.startswith("/"):
        raise LaunchError(
            f"--state-root {args.state_root!r}: must be an absolute path on the nodes"
        )
    if args.state_bucket is not None and not _BUCKET_NAME.fullmatch(args.state_bucket):
        raise LaunchError(f"--state-bucket {args.state_bucket!r}: not a valid bucket name")


def _resources_from_flags(args: argparse.Namespace) -> dict[str, Any]:
    resources: dict[str, Any] = {}
    if args.gpus is not None:
        if not _GPU_SPEC.fullmatch(args.gpus):
            raise LaunchError(f"--gpus {args.gpus!r}: use TYPE or TYPE:COUNT, e.g. H100:8")
        resources["accelerators"] = args.gpus
    for key in ("cpus", "memory", "infra"):
        value = getattr(args, key)
        if value is not None:
            if not value.strip():
                raise LaunchError(f"--{key} must not be empty")
            resources[key] = value
    if args.spot is not None:
        resources["use_spot"] = args.spot
    return resources


def build_request(args: argparse.Namespace, environ: Mapping[str, str], cwd: Path) -> LaunchRequest:
    """Check every flag; raises :class:`LaunchError` naming the first problem."""
    command = list(args.command or [])
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise LaunchError("no command given: use `skyguard launch [options] -- CMD ARGS...`")
    if command[0].startswith("-"):
        raise LaunchError(f"unknown option {command[0]!r} (put the command after `--`)")
    name = check_name(args.name) if args.name else default_name()
    copies = _count("--copies", args.copies)
    if args.cluster is not None:
        check_name(args.cluster, "--cluster")
        if copies > 1:
            raise LaunchError("--copies needs managed jobs: drop --cluster")
    if copies > 1:
        # Copies are named <name>-<i>; the longest must be valid too.
        check_name(f"{name}-{copies}")
    _check_state_flags(args)

    envs = read_env_file(Path(args.env_file).expanduser()) if args.env_file else {}
    envs.update(parse_env_items(args.env, environ))
    both = sorted(set(envs) & set(args.secret))
    if both:
        raise LaunchError(f"{both[0]} is given as both --env and --secret")
    secrets = read_secrets(args.secret, environ)
    for key, value in _knob_envs(args).items():
        if key in envs:
            raise LaunchError(f"--env {key} and its flag are both given: keep one")
        envs[key] = value
    if args.state_bucket is not None:
        envs[STATE_BUCKET_ENV] = args.state_bucket
    resources = _resources_from_flags(args)
    num_nodes = _count("--nodes", args.nodes) if args.nodes is not None else None

    try:
        workdir, workdir_spec, commit = workdir_source(
            args.workdir, args.git_ref, args.skip_git_check, cwd
        )
    except GitCheckError as error:
        raise LaunchError(str(error)) from None
    recipe = Path(args.recipe).expanduser() if args.recipe else workdir / "recipes" / "job.yaml"
    if not recipe.is_file():
        raise LaunchError(f"no recipe at {recipe}: pass --recipe PATH")
    return LaunchRequest(
        command=tuple(command),
        name=name,
        copies=copies,
        recipe=recipe,
        workdir=workdir_spec,
        envs=envs,
        secrets=secrets,
        resources=resources,
        num_nodes=num_nodes,
        state_root=args.state_root,
        cluster=args.cluster,
        git_commit=commit,
    )


def task_configs(request: LaunchRequest, recipe: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The final task config of each copy, secrets included (print only via :func:`redact`)."""
    base = copy.deepcopy(dict(recipe))
    recipe_envs = {str(k): "" if v is None else str(v) for k, v in (base.get("envs") or {}).items()}
    base["workdir"] = copy.deepcopy(request.workdir)

    resources = dict(base.get("resources") or {})
    if "accelerators" not in request.resources and recipe_envs.get(GPUS_ENV):
        gpus = recipe_envs[GPUS_ENV]
        if not _GPU_SPEC.fullmatch(gpus):
            raise LaunchError(f"recipe env {GPUS_ENV}={gpus!r}: use TYPE or TYPE:COUNT")
        resources["accelerators"] = gpus
    resources.update(request.resources)
    base["resources"] = resources
    if request.num_nodes is not None:
        base["num_nodes"] = request.num_nodes
    elif recipe_envs.get(NODES_ENV):
        base["num_nodes"] = _count(f"recipe env {NODES_ENV}", recipe_envs[NODES_ENV])

    envs = {**recipe_envs, **request.envs}
    envs["SKYGUARD_CMD"] = shlex.join(request.command)
    if "accelerators" in resources:
        envs[GPUS_ENV] = str(resources["accelerators"])
    envs[NODES_ENV] = str(base.get("num_nodes", 1))
    if request.git_commit is not None:
        envs["SKYGUARD_GIT_COMMIT"] = request.git_commit
    if request.state_root is not None:
        # A path every node (and every recovery) shares: no bucket to mount.
        envs[STATE_ROOT_ENV] = request.state_root
        envs.pop(STATE_BUCKET_ENV, None)
        base.pop("file_mounts", None)

    secrets = {str(k): "" if v is None else str(v) for k, v in (base.get("secrets") or {}).items()}
    secrets.update(request.secrets)
    if secrets:
        base["secrets"] = secrets

    configs = []
    for index in range(1, request.copies + 1):
        name = request.name if request.copies == 1 else f"{request.name}-{index}"
        config = copy.deepcopy(base)
        config["name"] = name
        config["envs"] = {**envs, "SKYGUARD_RUN_ID": name, "SKYGUARD_JOB_NAME": name}
        configs.append(config)
    return configs


def redact(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy safe to print: every non-empty secret value replaced."""
    shown = copy.deepcopy(dict(config))
    if shown.get("secrets"):
        shown["secrets"] = {k: REDACTED if v else v for k, v in shown["secrets"].items()}
    return shown


def render(configs: Sequence[Mapping[str, Any]], fmt: str) -> str:
    """The configs as JSON or (multi-document) YAML, secrets redacted."""
    import yaml  # type: ignore[import-untyped,unused-ignore]

    safe = [redact(config) for config in configs]
    if fmt == "json":
        return json.dumps(safe[0] if len(safe) == 1 else safe, indent=2)

    def text(dumper: Any, value: str) -> Any:
        # Scripts (setup, run) stay readable as block literals, like the recipe.
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    dumper: Any = type("TaskDumper", (yaml.SafeDumper,), {})
    dumper.add_representer(str, text)
    return "---\n".join(
        yaml.dump(config, Dumper=dumper, sort_keys=False, allow_unicode=True) for config in safe
    )


def validate_with_sky(configs: Sequence[Mapping[str, Any]]) -> list[Any]:
    """SkyPilot's own parser and schema; returns the ``sky.Task`` of each config."""
    import sky

    tasks = []
    for config in configs:
        try:
            task: Any = sky.Task.from_yaml_config(copy.deepcopy(dict(config)))
            task.validate_name()
        except Exception as error:  # SkyPilot raises ValueError and its own types
            raise LaunchError(f"SkyPilot rejects the task: {sky_message(error)}") from None
        tasks.append(task)
    return tasks


# ---------------------------------------------------------------- talking to SkyPilot


def sky_message(error: BaseException) -> str:
    """SkyPilot's error as one readable line (no colours, no traceback)."""
    text = _ANSI.sub("", str(error)).strip() or type(error).__name__
    return _one_line(text)


def _one_line(text: str, limit: int = 400) -> str:
    line = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return line if len(line) <= limit else line[: limit - 3] + "..."


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


if __name__ == "__main__":
    from devops.skypilot.cli import main as cli_main

    sys.exit(cli_main(["launch", *sys.argv[1:]]))
