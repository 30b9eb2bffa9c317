"""What ``skyguard launch`` was asked for: flags, envs and secrets checked into a
``LaunchRequest`` before anything talks to SkyPilot (no ``sky`` import here)."""

from __future__ import annotations

import argparse
import getpass
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devops.skypilot.client.git_state import GitCheckError, origin_url, workdir_source
from devops.skypilot.client.launch.identity import BUCKET_NAME, default_state_bucket
from devops.skypilot.client.launch.recipes import RecipeError, find_recipe
from devops.skypilot.client.launch.wheel import WHEEL_ENV, WheelError, build_wheel, cache_dir
from devops.skypilot.common.values import ConfigError, parse_count, parse_duration

#: SkyPilot's own name rules (``sky.skylet.constants.CLUSTER_NAME_VALID_REGEX`` for
#: the cluster a managed job runs on, and ``sky.task._VALID_NAME_REGEX`` for the
#: job); a name must satisfy both. Copied so a bad name fails before ``sky`` loads;
#: a test keeps them equal to SkyPilot's.
CLUSTER_NAME_REGEX = r"[a-zA-Z]([-_.a-zA-Z0-9]*[a-zA-Z0-9])?"
TASK_NAME_REGEX = r"[a-zA-Z0-9]+(?:[._-]{1,2}[a-zA-Z0-9]+)*"
#: ``sky.utils.common_utils._VALID_ENV_VAR_REGEX``.
ENV_NAME_REGEX = r"[a-zA-Z_][a-zA-Z0-9_]*"
GPU_SPEC = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*(:\d+(\.\d+)?)?")

#: Envs the recipe reads that only ``launch`` may set (from the positional
#: command and ``--name``), so an ``--env`` cannot contradict them.
RESERVED_ENVS = (
    "SKYGUARD_CMD",
    "SKYGUARD_RUN_ID",
    "SKYGUARD_RUN_KEY",
    "SKYGUARD_JOB_NAME",
    "SKYGUARD_GIT_COMMIT",
    WHEEL_ENV,
)
#: Recipe envs that are defaults for launch's resource flags (SkyPilot does not
#: substitute envs into ``resources``, so ``launch`` applies them).
GPUS_ENV = "SKYGUARD_GPUS"
NODES_ENV = "SKYGUARD_NODES"
STATE_ROOT_ENV = "SKYGUARD_STATE_ROOT"
STATE_BUCKET_ENV = "SKYGUARD_STATE_BUCKET"
REDACTED = "<redacted>"


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
    #: The bucket used when neither a flag, an env nor the recipe names one.
    default_bucket: str = ""
    #: This installation of skyguard as a wheel, for the nodes (None: ship nothing).
    wheel: Path | None = None


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


def parse_flag_count(flag: str, value: str, minimum: int = 1) -> int:
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
        raise LaunchError(f"recipe {path} is not valid YAML: {one_line(str(error))}") from None
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
    if args.state_bucket is not None and not BUCKET_NAME.fullmatch(args.state_bucket):
        raise LaunchError(
            f"--state-bucket {args.state_bucket!r}: not a valid bucket name "
            "(3-63 of a-z 0-9 . -, starting and ending with a letter or digit)"
        )


def _resources_from_flags(args: argparse.Namespace) -> dict[str, Any]:
    resources: dict[str, Any] = {}
    if args.gpus is not None:
        if not GPU_SPEC.fullmatch(args.gpus):
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
    copies = parse_flag_count("--copies", args.copies)
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
    num_nodes = parse_flag_count("--nodes", args.nodes) if args.nodes is not None else None

    try:
        workdir, workdir_spec, commit = workdir_source(
            args.workdir, args.git_ref, args.skip_git_check, cwd
        )
    except GitCheckError as error:
        raise LaunchError(str(error)) from None
    try:
        recipe = find_recipe(args.recipe, workdir)
    except RecipeError as error:
        raise LaunchError(str(error)) from None
    try:
        wheel = build_wheel(cache_dir(environ))
    except WheelError as error:
        raise LaunchError(str(error)) from None
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
        default_bucket=default_state_bucket(
            getpass.getuser(), workdir.name, origin_url(workdir) or str(workdir)
        ),
        wheel=wheel,
    )


def one_line(text: str, limit: int = 400) -> str:
    line = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return line if len(line) <= limit else line[: limit - 3] + "..."
