"""``skyguard``: one entry point; only the subcommand in use is imported.

Errors in what the user typed are one line on stderr and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from devops.skypilot.common.console import fill_closed_standard_fds, release_closed_streams
from devops.skypilot.common.packages import shadowing
from devops.skypilot.common.termination import EXIT_CONFIG_ERROR


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_CONFIG_ERROR, f"{self.prog}: error: {message}\n")


#: name -> (module, help). Each module has ``add_arguments(parser)`` and ``main(args) -> int``.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": ("devops.skypilot.node.main", "run a command under supervision (on each node)"),
    "launch": (
        "devops.skypilot.client.launch.command",
        "submit a supervised job to SkyPilot (client side)",
    ),
    "status": ("devops.skypilot.client.status", "a job's state and its attempt history"),
    "init": (
        "devops.skypilot.client.launch.recipes",
        "write .skyguard/job.yaml into this repository, to customise what launch submits",
    ),
    "notify": ("notifications.cli", "send a test notification on each configured channel"),
    "notify-event": (
        "devops.skypilot.controller.event",
        "SkyPilot's event_callback on the jobs controller: announce a managed-job status",
    ),
    "nccl-check": (
        "devops.skypilot.node.nccl.preflight",
        "NCCL/gloo preflight: collectives and bus bandwidth",
    ),
}


def build_parser(argv: Sequence[str]) -> OneLineParser:
    """The parser, with flags only for the subcommand named in ``argv`` (if any)."""
    parser = OneLineParser(
        prog="skyguard",
        description="Supervise training jobs on SkyPilot: hangs, crash loops, clean exits.",
    )
    commands = parser.add_subparsers(
        dest="subcommand", metavar="COMMAND", parser_class=OneLineParser
    )
    commands.required = True
    selected = next((arg for arg in argv if not arg.startswith("-")), None)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(_module=module_name)
        if name == selected:
            importlib.import_module(module_name).add_arguments(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    fill_closed_standard_fds()  # first: before any file could take a closed fd's number
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    try:
        status: int = importlib.import_module(args._module).main(args)
    except ImportError as error:
        # A training repo's own `devops`/`notifications` found before skyguard's.
        problem = shadowing(error)
        if problem is None:
            raise
        print(f"skyguard: error: {problem}", file=sys.stderr)
        status = EXIT_CONFIG_ERROR
    finally:
        release_closed_streams()
    return status
