"""The transaction-log writer against W&B's own: logs written by wandb's DataStore,
extended by skyguard, read back by wandb's DataStore (block edges, padding, records
spanning blocks, torn ends, logs far longer than the window read at the end)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from notifications.channels import wandb_log

pytest.importorskip("wandb")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:wandb")

BLOCK = 32768


def pb() -> Any:
    from wandb.proto import wandb_internal_pb2

    return wandb_internal_pb2


def write_log(path: Path, body_sizes: list[int], exit_code: int = 0) -> list[bytes]:
    """A log as wandb writes it: records numbered from 1 (payloads of the given sizes as
    summary values), then an exit record. Returns the serialized records."""
    from wandb.sdk.internal import datastore

    store: Any = datastore.DataStore()
    store.open_for_write(str(path))
    written = []
    for num, size in enumerate(body_sizes, start=1):
        record = pb().Record(num=num)
        item = record.summary.update.add()
        item.key, item.value_json = f"k{num}", json.dumps("x" * size)
        store.write(record)
        written.append(record.SerializeToString())
    closing = pb().Record(num=len(body_sizes) + 1)
    closing.exit.exit_code = exit_code
    store.write(closing)
    written.append(closing.SerializeToString())
    store.close()
    return written


def read_log(path: Path) -> list[Any]:
    from wandb.sdk.internal import datastore

    store: Any = datastore.DataStore()
    store.open_for_scan(str(path))
    found = []
    while (data := store.scan_data()) is not None:
        record = pb().Record()
        record.ParseFromString(data)
        found.append(record)
    store.close()
    return found


def ours(value: str) -> tuple[int, bytes]:
    return wandb_log.RECORD_SUMMARY, wandb_log.summary_message({"skyguard/mark": value})


def check(path: Path, original: list[bytes], added: list[str]) -> None:
    """Originals kept in order, ours before the renumbered exit, numbers consecutive."""
    after = read_log(path)
    assert [r.SerializeToString() for r in after[: len(original) - 1]] == original[:-1]
    middle = after[len(original) - 1 : -1]
    assert [json.loads(r.summary.update[0].value_json) for r in middle] == added
    assert after[-1].WhichOneof("record_type") == "exit"
    assert [r.num for r in after] == list(range(1, len(after) + 1))


def payload_for(length: int) -> int:
    """The summary value size whose record serializes to exactly ``length`` bytes."""
    for size in range(length, 0, -1):
        record = pb().Record(num=1)
        item = record.summary.update.add()
        item.key, item.value_json = "k1", json.dumps("x" * size)
        if len(record.SerializeToString()) == length:
            return size
    raise AssertionError(f"no record of {length} bytes")


@pytest.mark.parametrize("gap", range(0, 10))
def test_an_exit_at_every_position_near_a_block_edge(tmp_path: Path, gap: int) -> None:
    """The first record ends ``gap`` bytes before the block does: below 7 bytes W&B
    pads to the next block, up to 11 it splits the exit across the edge (an empty or
    tiny first chunk); the records inserted there must be framed the same way."""
    path = tmp_path / "run-x.wandb"
    # file header (7) + chunk header (7) + the record = BLOCK - gap
    original = write_log(path, [payload_for(BLOCK - 14 - gap)])
    # The exit is padded into the next block, or split across the edge, or just fits.
    assert BLOCK < path.stat().st_size <= BLOCK + 2 * 7 + len(original[-1])
    wandb_log.insert_before_exit(path, [ours("a"), ours("b")], "x", 0)
    check(path, original, ["a", "b"])


def test_records_longer_than_a_block_on_both_sides(tmp_path: Path) -> None:
    path = tmp_path / "run-x.wandb"
    original = write_log(path, [10, 70_000, 5, 40_000])
    huge = wandb_log.RECORD_SUMMARY, wandb_log.summary_message({"skyguard/mark": "y" * 90_000})
    wandb_log.insert_before_exit(path, [huge, ours("z")], "x", 0)
    after = read_log(path)
    assert [r.SerializeToString() for r in after[:4]] == original[:4]
    assert len(after[4].summary.update[0].value_json) > 90_000
    assert [r.num for r in after] == list(range(1, 8))


def test_a_long_log_whose_last_record_outgrows_the_first_window(tmp_path: Path) -> None:
    """Thousands of records, a body record bigger than the first window right before
    the exit: the window grows until a whole record before the exit is in it."""
    path = tmp_path / "run-x.wandb"
    original = write_log(path, [300] * 3000 + [200_000])
    assert path.stat().st_size > 10 * wandb_log.FIRST_WINDOW
    wandb_log.insert_before_exit(path, [ours("end")], "x", 0)
    check(path, original, ["end"])


def test_a_torn_end_is_dropped_and_an_exit_added(tmp_path: Path) -> None:
    path = tmp_path / "run-x.wandb"
    original = write_log(path, [100, 50_000, 100])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - len(original[-1]) - 7 - 50])  # into the last body record
    wandb_log.insert_before_exit(path, [ours("killed")], "x", 137)
    after = read_log(path)
    assert [r.SerializeToString() for r in after[:2]] == original[:2]
    assert [r.WhichOneof("record_type") for r in after[2:]] == ["summary", "exit"]
    assert after[-1].exit.exit_code == 137 and after[-1].num == 4


def test_a_log_that_is_not_wandbs_is_left_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "run-x.wandb"
    path.write_bytes(b":W&B\xe1\xbe\x07" + b"\x00" * 40)  # a future version
    with pytest.raises(wandb_log.WandbLogError, match="known version"):
        wandb_log.insert_before_exit(path, [ours("a")], "x", 0)
    assert path.read_bytes() == b":W&B\xe1\xbe\x07" + b"\x00" * 40
    assert [p.name for p in tmp_path.iterdir()] == ["run-x.wandb"]
