"""docs/troubleshooting.md, run as written: every ``console`` block's commands, its messages.

A block's ``$ `` lines run in one bash session in an empty directory, with
``skyguard`` and ``python`` on PATH and ``SKYGUARD_STATE_DIR`` inside that
directory. Every other line must appear in the output, in order, as a whole line;
``<...>`` placeholders match any text and ``...`` lines are skipped.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, REPO, SkyguardRunner

PAGE = REPO / "docs" / "troubleshooting.md"
TEXT = PAGE.read_text()
BLOCKS = re.findall(r"^```console\n(.*?)^```$", TEXT, re.MULTILINE | re.DOTALL)
PLACEHOLDER = re.compile(r"<[^<>]+>")


def line_pattern(expected: str) -> re.Pattern[str]:
    parts = PLACEHOLDER.split(expected)
    return re.compile(".+?".join(re.escape(part) for part in parts))


def shims(bin_dir: Path) -> None:
    bin_dir.mkdir()
    for name, target in (("skyguard", f"{PYTHON} -m devops.skypilot"), ("python", PYTHON)):
        path = bin_dir / name
        path.write_text(f'#!/bin/sh\nexec {target} "$@"\n')
        path.chmod(0o755)


def test_the_page_has_five_errors_each_with_an_example() -> None:
    sections = re.split(r"^## ", TEXT, flags=re.MULTILINE)[1:]
    assert [section.split(".", 1)[0] for section in sections] == ["1", "2", "3", "4", "5"]
    for section in sections:
        assert "```console" in section, f"no example in section {section.splitlines()[0]}"


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block-{i + 1}" for i in range(len(BLOCKS))])
def test_block_prints_what_the_page_says(
    block: str, skyguard: SkyguardRunner, tmp_path: Path
) -> None:
    lines = block.splitlines()
    commands = [line[2:] for line in lines if line.startswith("$ ")]
    expected = [line for line in lines if not line.startswith("$ ") and line != "..."]
    assert commands and expected
    shims(tmp_path / "bin")
    work = tmp_path / "work"
    work.mkdir()
    env = skyguard.env(
        {
            "HOME": str(tmp_path),
            "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            "SKYGUARD_STATE_DIR": str(work / "state"),
        }
    )
    done = subprocess.run(
        ["bash", "-c", "\n".join(commands)],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
    )
    output = done.stdout.splitlines()
    position = 0
    for want in expected:
        pattern = line_pattern(want)
        hit = next((i for i in range(position, len(output)) if pattern.fullmatch(output[i])), None)
        if hit is None:
            shown = "\n".join(output)
            pytest.fail(f"docs say {want!r}, but the commands printed:\n{shown}")
        position = hit + 1
