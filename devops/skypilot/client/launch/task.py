"""The SkyPilot task configs for a ``LaunchRequest``: the recipe with its envs, secrets and
resources filled in, rendered for ``--dry-run`` and checked by SkyPilot's own parser."""

from __future__ import annotations

import copy
import json
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from devops.skypilot.client.launch.identity import new_run_key
from devops.skypilot.client.launch.recipes import SETUP, SHIPPED
from devops.skypilot.client.launch.request import (
    GPU_SPEC,
    GPUS_ENV,
    NODES_ENV,
    STATE_BUCKET_ENV,
    STATE_ROOT_ENV,
    LaunchError,
    LaunchRequest,
    parse_flag_count,
)
from devops.skypilot.client.launch.submit import sky_message
from devops.skypilot.client.launch.wheel import NODE_DIR, WHEEL_ENV

REDACTED = "<redacted>"


def task_configs(request: LaunchRequest, recipe: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The final task config of each copy, secrets included (print only via :func:`redact`)."""
    base = copy.deepcopy(dict(recipe))
    recipe_envs = {str(k): "" if v is None else str(v) for k, v in (base.get("envs") or {}).items()}
    base["workdir"] = copy.deepcopy(request.workdir)

    resources = dict(base.get("resources") or {})
    if "accelerators" not in request.resources and recipe_envs.get(GPUS_ENV):
        gpus = recipe_envs[GPUS_ENV]
        if not GPU_SPEC.fullmatch(gpus):
            raise LaunchError(f"recipe env {GPUS_ENV}={gpus!r}: use TYPE or TYPE:COUNT")
        resources["accelerators"] = gpus
    resources.update(request.resources)
    base["resources"] = resources
    if request.num_nodes is not None:
        base["num_nodes"] = request.num_nodes
    elif recipe_envs.get(NODES_ENV):
        base["num_nodes"] = parse_flag_count(f"recipe env {NODES_ENV}", recipe_envs[NODES_ENV])

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
        mounts = {
            k: v for k, v in (base.get("file_mounts") or {}).items() if STATE_ROOT_ENV not in k
        }
        base["file_mounts"] = mounts
    elif not envs.get(STATE_BUCKET_ENV):
        # Bucket names are global: never a shared default (see identity.py).
        envs[STATE_BUCKET_ENV] = request.default_bucket

    if request.wheel is not None:
        # The nodes install exactly this skyguard (setup.sh beside it, from the same
        # installation); real files, not links: rsync would copy a link as a link.
        mounts = dict(base.get("file_mounts") or {})
        mounts[f"{NODE_DIR}/{request.wheel.name}"] = str(request.wheel.resolve())
        mounts[f"{NODE_DIR}/{SETUP}"] = str((SHIPPED / SETUP).resolve())
        base["file_mounts"] = mounts
        envs[WHEEL_ENV] = request.wheel.name
    if not base.get("file_mounts"):
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
        config["envs"] = {
            **envs,
            "SKYGUARD_RUN_ID": name,
            "SKYGUARD_RUN_KEY": new_run_key(name),
            "SKYGUARD_JOB_NAME": name,
        }
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
