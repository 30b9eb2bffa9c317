"""The runner's configuration, built in one place: defaults < TOML [run] < env < flags.

Every option ``--some-option`` also reads ``SKYGUARD_SOME_OPTION`` so a SkyPilot
recipe can set it under ``envs:``. :class:`RunConfig` is frozen; nothing else in
the runner reads the environment for its own settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

from devops.skypilot.common.identity import run_key
from devops.skypilot.common.values import (
    ConfigError,
    parse_count,
    parse_duration,
    parse_port,
    parse_rate,
    parse_switch,
)


@dataclass(frozen=True)
class Option:
    """One runner option: its flag, its env variable, its parser and default."""

    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    metavar: str = ""

    @property
    def switch(self) -> bool:
        """A flag without a value (``--torchrun``); its env variable takes yes/no."""
        return self.parse is parse_switch

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env_var(self) -> str:
        return "SKYGUARD_" + self.name.upper()


def _path(value: Any) -> Path:
    return Path(os.path.expanduser(str(value)))


def _text(value: Any) -> str:
    return str(value)


def _regex(value: Any) -> str:
    try:
        re.compile(str(value))
    except re.error as error:
        raise ConfigError(f"not a valid regular expression: {error}") from None
    return str(value)


#: The runner's options, in the order ``--help`` shows them. README's
#: configuration reference is generated from this table.
OPTIONS: tuple[Option, ...] = (
    Option("config", _path, None, "TOML file with [run] and [notifications] sections", "PATH"),
    Option(
        "state_dir",
        _path,
        None,
        "where attempts, budgets and logs are kept; must survive a recovery "
        "(default <state-root>/<run key>/node-<rank>, or ~/.skyguard/<run key>)",
        "DIR",
    ),
    Option(
        "state_root",
        _path,
        None,
        "bucket mount or shared path that holds every run's state dir (docs/launch.md)",
        "DIR",
    ),
    Option(
        "heartbeat_file",
        _path,
        None,
        "file the command touches to say it is alive; exported to it as "
        "SKYGUARD_HEARTBEAT_FILE (default <state-dir>/heartbeat)",
        "PATH",
    ),
    Option(
        "heartbeat_timeout", parse_duration, 0.0, "hang = no beat for this long; 0 = off", "DUR"
    ),
    Option(
        "progress_pattern",
        _regex,
        None,
        "an output line matching this regex counts as a heartbeat (no code change)",
        "REGEX",
    ),
    Option(
        "derived_timeout_factor",
        parse_rate,
        0.0,
        "opt-in: later attempts' heartbeat timeout = this x the longest beat gap seen "
        "before (at most --heartbeat-timeout; 5 is NVRx's factor); 0 = off",
        "X",
    ),
    Option(
        "startup_grace",
        parse_duration,
        0.0,
        "allow this long before the first beat (checkpoint loading, compile)",
        "DUR",
    ),
    Option(
        "max_runtime",
        parse_duration,
        0.0,
        "runtime budget summed over every attempt of the task; 0 = off",
        "DUR",
    ),
    Option("grace", parse_duration, 30.0, "SIGTERM, wait this long, then SIGKILL the tree", "DUR"),
    Option(
        "forensics_timeout",
        parse_duration,
        3.0,
        "on a hang, capture every process's stack for at most this long before SIGTERM; 0 = off",
        "DUR",
    ),
    Option(
        "max_retries", parse_count, 3, "retryable ends allowed before giving up (exit 125)", "N"
    ),
    Option(
        "crash_loop_count", parse_count, 3, "crash loop: this many failed ends in a row ...", "N"
    ),
    Option("crash_loop_window", parse_duration, 60.0, "... each shorter than this; 0 = off", "DUR"),
    Option("job_name", _text, None, "name used in records and notifications", "NAME"),
    Option(
        "torchrun",
        parse_switch,
        False,
        "run the command under torchrun, rendezvous from SkyPilot's variables "
        "(restarts off, grace = --grace)",
    ),
    Option(
        "nproc_per_node",
        parse_count,
        None,
        "with --torchrun: processes per node (default: GPUs per node, or 1)",
        "N",
    ),
    Option("master_port", parse_port, 29500, "with --torchrun: rendezvous port", "PORT"),
    Option(
        "preflight",
        parse_switch,
        False,
        "NCCL/gloo check of collectives and bus bandwidth before the command; "
        "a failure ends the attempt as nccl_error (exit 75)",
    ),
    Option("preflight_timeout", parse_duration, 45.0, "bound of the preflight", "DUR"),
    Option(
        "preflight_min_busbw",
        parse_rate,
        None,
        "preflight bus bandwidth floor, GB/s (default: per interconnect)",
        "GBPS",
    ),
    Option(
        "coord_port",
        parse_port,
        29411,
        "multi-node: port of the head node's coordination endpoint",
        "PORT",
    ),
    Option(
        "coord_timeout",
        parse_duration,
        30.0,
        "multi-node: a head unreachable this long counts as failed",
        "DUR",
    ),
    Option(
        "gpu_idle_timeout",
        parse_duration,
        0.0,
        "all GPUs idle this long while the command runs is a fault; 0 = off",
        "DUR",
    ),
)
_BY_NAME = {option.name: option for option in OPTIONS}


@dataclass(frozen=True)
class RunConfig:
    """Everything the runner needs, resolved and validated."""

    command: tuple[str, ...]
    state_dir: Path
    heartbeat_file: Path
    heartbeat_timeout: float
    startup_grace: float
    max_runtime: float
    grace: float
    max_retries: int
    crash_loop_count: int
    crash_loop_window: float
    job_name: str
    #: The run key (:mod:`devops.skypilot.common.identity`): same across recoveries and
    #: controller restarts, new for every launch.
    task_id: str
    node_rank: int
    num_nodes: int = 1
    torchrun: bool = False
    nproc_per_node: int | None = None
    master_port: int = 29500
    preflight: bool = False
    preflight_timeout: float = 45.0
    preflight_min_busbw: float | None = None
    coord_port: int = 29411
    coord_timeout: float = 30.0
    gpu_idle_timeout: float = 0.0
    forensics_timeout: float = 3.0
    progress_pattern: str | None = None
    derived_timeout_factor: float = 0.0
    #: The whole config file, for sections other parts of skyguard own
    #: (notifications); kept out of repr because it may hold secrets.
    file_sections: Mapping[str, Any] = field(default_factory=dict, repr=False)
    #: Whether this is a SkyPilot managed job (recovered, often onto another machine).
    managed: bool = False
    dry_run: bool = False

    def describe(self) -> dict[str, Any]:
        """The resolved settings for ``--dry-run`` and logs; holds no secrets."""
        shown = {
            item.name: _jsonable(getattr(self, item.name))
            for item in dataclasses.fields(self)
            if item.repr
        }
        return {**shown, "config_sections": sorted(self.file_sections)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``skyguard run``'s flags. Defaults stay None so env and file can fill them."""
    for option in OPTIONS:
        help_text = f"{option.help} (env {option.env_var})"
        if option.switch:
            parser.add_argument(
                option.flag, dest=option.name, action="store_const", const=True, help=help_text
            )
            continue
        default_text = "" if option.default is None else f" [default: {option.default}]"
        parser.add_argument(
            option.flag,
            dest=option.name,
            default=None,
            metavar=option.metavar or None,
            help=f"{option.help}{default_text} (env {option.env_var})",
        )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved configuration as JSON and start nothing",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")


def _load_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data: dict[str, Any] = tomllib.load(handle)
            return data
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None


def _resolve(
    name: str, flags: Mapping[str, Any], env: Mapping[str, str], file_run: Mapping[str, Any]
) -> Any:
    option = _BY_NAME[name]
    for source, value in (
        (option.flag, flags.get(name)),
        (option.env_var, env.get(option.env_var) or None),
        (f"[run] {name}", file_run.get(name)),
    ):
        if value is not None:
            try:
                return option.parse(value)
            except ConfigError as error:
                raise ConfigError(f"{source}: {error}") from None
    return option.default


def _env_count(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name) or str(default)
    try:
        return parse_count(raw)
    except ConfigError as error:
        raise ConfigError(f"{name}: {error}") from None


def _check_command(command: Sequence[str]) -> None:
    program = command[0]
    if os.sep in program:
        if not os.path.isfile(program):
            raise ConfigError(f"command not found: {program}")
        if not os.access(program, os.X_OK):
            raise ConfigError(f"command is not executable: {program}")
    elif shutil.which(program) is None:
        raise ConfigError(f"command not found on PATH: {program}")


def _job_name(env: Mapping[str, str], task_id: str) -> str:
    import json

    info = env.get("SKYPILOT_CLUSTER_INFO")
    if info:
        try:
            name = json.loads(info).get("cluster_name")
        except (ValueError, AttributeError):
            name = None
        if isinstance(name, str) and name:
            return name
    return task_id


def build_config(args: argparse.Namespace, env: Mapping[str, str]) -> RunConfig:
    """Resolve ``skyguard run``'s arguments. Raises :class:`ConfigError`."""
    flags = vars(args)
    unknown_command: Sequence[str] = flags.get("command") or []
    command = list(unknown_command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise ConfigError("no command given: use `skyguard run [options] -- CMD ARGS...`")
    if command[0].startswith("-") and command[0] != "-":
        raise ConfigError(f"unknown option {command[0]!r} (put the command after `--`)")

    config_path = _resolve("config", flags, env, {})
    file_data = _load_file(config_path) if config_path is not None else {}
    file_run = file_data.get("run", {})
    if not isinstance(file_run, dict):
        raise ConfigError(f"config file {config_path}: [run] must be a table")
    unknown = sorted(set(file_run) - set(_BY_NAME) - {"config"})
    if unknown:
        raise ConfigError(f"config file {config_path}: unknown [run] key {unknown[0]!r}")

    def value(name: str) -> Any:
        return _resolve(name, flags, env, file_run)

    task_id = run_key(env)
    node_rank = _env_count(env, "SKYPILOT_NODE_RANK", 0)
    num_nodes = max(1, _env_count(env, "SKYPILOT_NUM_NODES", 1))
    state_dir = value("state_dir")
    state_root = value("state_root")
    if state_dir is None and state_root is not None:
        state_dir = state_root / task_id / f"node-{node_rank}"
    elif state_dir is None:
        state_dir = Path.home() / ".skyguard" / task_id
        if num_nodes > 1:
            # Nodes may share a home (NFS): each keeps its own files. An explicit
            # --state-dir is used as given (recipes/job.yaml makes it per node).
            state_dir = state_dir / f"node-{node_rank}"
    heartbeat_file = value("heartbeat_file") or state_dir / "heartbeat"
    # Options that map one to one onto RunConfig fields; the rest are derived above.
    plain = {
        option.name: value(option.name)
        for option in OPTIONS
        if option.name not in {"config", "state_dir", "state_root", "heartbeat_file", "job_name"}
    }
    config = RunConfig(
        command=tuple(command),
        state_dir=state_dir,
        heartbeat_file=heartbeat_file,
        job_name=value("job_name") or _job_name(env, task_id),
        task_id=task_id,
        node_rank=node_rank,
        num_nodes=num_nodes,
        file_sections={k: v for k, v in file_data.items() if k != "run"},
        managed=bool(env.get("SKYPILOT_MANAGED_JOB_ID")),
        dry_run=bool(flags.get("dry_run")),
        **plain,
    )
    if 0 < config.derived_timeout_factor < 1:
        raise ConfigError("--derived-timeout-factor must be 0 (off) or >= 1")
    for needy in ("startup_grace", "progress_pattern", "derived_timeout_factor"):
        if getattr(config, needy) and not config.heartbeat_timeout:
            raise ConfigError(f"--{needy.replace('_', '-')} needs --heartbeat-timeout")
    if config.node_rank >= config.num_nodes:
        raise ConfigError(
            f"SKYPILOT_NODE_RANK={config.node_rank} but SKYPILOT_NUM_NODES={config.num_nodes}"
        )
    # Under torchrun the command is a script or `-m module`: torchrun checks it.
    _check_command(("torchrun",) if config.torchrun else config.command)
    if config.preflight_timeout <= 0:
        raise ConfigError("--preflight-timeout must be > 0")
    return config
