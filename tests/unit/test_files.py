"""write_atomic: the new content or the old, never a half-written file or a stray temp."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from devops.skypilot.common.files import write_atomic


def test_replaces_the_file_with_text_or_bytes(tmp_path: Path) -> None:
    target = tmp_path / "record.json"
    target.write_text("old", encoding="utf-8")
    write_atomic(target, "new ✓", durable=True)
    assert target.read_text(encoding="utf-8") == "new ✓"
    write_atomic(target, b"\x00\xff")
    assert target.read_bytes() == b"\x00\xff"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["record.json"]


def test_mode_is_applied_and_mkstemps_0600_is_the_default(tmp_path: Path) -> None:
    shared, private = tmp_path / "shared", tmp_path / "private"
    write_atomic(shared, "x", mode=0o644)
    write_atomic(private, "x")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o644
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_a_failed_rename_leaves_the_target_alone_and_no_temp_behind(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.mkdir()
    (target / "inside").write_text("kept", encoding="utf-8")
    with pytest.raises(OSError):
        write_atomic(target, "would replace a folder")
    assert (target / "inside").read_text(encoding="utf-8") == "kept"
    assert [path.name for path in tmp_path.iterdir()] == ["taken"]


def test_a_missing_folder_is_the_callers_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "absent" / "file", "x")
    assert list(tmp_path.iterdir()) == []
