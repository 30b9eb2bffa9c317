"""W&B's offline transaction log (``run-<id>.wandb``), extended without importing wandb.

An offline run is one directory and one log; ``wandb sync`` uploads each directory
as a run, and a second directory with the same id is synced as another instance that
may replace the first one's config and summary. So skyguard never writes a directory
of its own: it adds its records to the training run's log, before the run's ``exit``
record (``wandb sync`` sends ``exit`` last and the run is then finished), as if the
training code had written them itself. Every record already there is kept as it was;
only the tail from ``exit`` on is renumbered after the new records, since record
numbers are consecutive. The new log is written to a temporary file and renamed over
the old one, so a reader sees the old log or the new one, never half of either.

Format (``wandb/sdk/internal/datastore.py``, LevelDB's log format): a 7-byte header
(``:W&B``, magic 0xBEE1, version 0), then 32 KiB blocks of chunks: CRC-32 of type and
data (zlib's, seeded with the type byte's), length (uint16), type (FULL, FIRST,
MIDDLE, LAST), data; a block's last bytes, too few for a chunk header, are zeros. A
record is a protobuf ``wandb.internal.Record``: only its field numbers are read here,
and the three kinds skyguard writes (summary, alert, exit) are encoded by hand;
``import wandb`` alone costs most of a second at the runner's exit. The tests read
the result with wandb's own reader and protobuf classes.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

HEADER = struct.pack("<4sHB", b":W&B", 0xBEE1, 0)
BLOCK = 32768
CHUNK_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
_SEED = {kind: zlib.crc32(bytes([kind])) for kind in (FULL, FIRST, MIDDLE, LAST)}

# wandb/proto/wandb_internal.proto field numbers.
RECORD_NUM = 1
RECORD_SUMMARY = 3
RECORD_ALERT = 10
RECORD_EXIT = 18
RECORD_INFO = 200
#: The records a finished run ends with: new records go before the first of them.
TAIL_FIELDS = frozenset({RECORD_EXIT, 20, 22})  # exit, final, footer
#: ``wait_duration`` W&B itself writes for ``run.alert`` (milliseconds).
ALERT_WAIT_MS = 60_000
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


class WandbLogError(Exception):
    """The log is not one this code knows how to extend; nothing was changed."""


# --- protobuf wire format -------------------------------------------------------------------


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative numbers as two's complement, as protobuf does
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes | int | str) -> bytes:
    if isinstance(payload, int):
        return _varint(number << 3 | _VARINT) + _varint(payload)
    data = payload.encode() if isinstance(payload, str) else payload
    return _varint(number << 3 | _BYTES) + _varint(len(data)) + data


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise WandbLogError("truncated protobuf varint")
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at, shift = at + 1, shift + 7
        if not byte & 0x80:
            return value, at


def fields(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(field number, value as int for varints, raw bytes of the whole field) in order."""
    at = 0
    while at < len(data):
        start = at
        key, at = _read_varint(data, at)
        number, wire = key >> 3, key & 7
        value = 0
        if wire == _VARINT:
            value, at = _read_varint(data, at)
        elif wire == _BYTES:
            length, at = _read_varint(data, at)
            at += length
        elif wire in (_FIXED64, _FIXED32):
            at += 8 if wire == _FIXED64 else 4
        else:
            raise WandbLogError(f"unsupported protobuf wire type {wire}")
        if at > len(data):
            raise WandbLogError("truncated protobuf field")
        yield number, value, data[start:at]


def record(kind: int, message: bytes, num: int, stream_id: str) -> bytes:
    return (
        _field(RECORD_NUM, num) + _field(kind, message) + _field(RECORD_INFO, _field(1, stream_id))
    )


def summary_message(values: Mapping[str, Any]) -> bytes:
    items = (_field(1, key) + _field(16, json.dumps(value)) for key, value in values.items())
    return b"".join(_field(1, item) for item in items)


def alert_message(title: str, text: str, level: str) -> bytes:
    return _field(1, title) + _field(2, text) + _field(3, level) + _field(4, ALERT_WAIT_MS)


def exit_message(exit_code: int) -> bytes:
    return _field(1, exit_code)


def renumbered(data: bytes, num: int) -> bytes:
    """The record with its ``num`` set to ``num``; every other field byte for byte."""
    kept = b"".join(raw for number, _, raw in fields(data) if number != RECORD_NUM)
    return _field(RECORD_NUM, num) + kept


# --- the log --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    #: Offset where the record starts (before any block padding in front of it).
    start: int
    data: bytes

    @property
    def kinds(self) -> frozenset[int]:
        return frozenset(number for number, _, _ in fields(self.data))

    @property
    def num(self) -> int:
        return next((value for number, value, _ in fields(self.data) if number == RECORD_NUM), 0)


def scan(window: bytes, offset: int) -> tuple[list[Entry], int]:
    """The whole records in ``window`` (the log from ``offset``, a block boundary, on) and
    the offset where the readable log ends: a run killed mid-write leaves a torn chunk,
    and it and anything after it cannot be read. A record that began before ``offset``
    is skipped (its remaining chunks come first)."""
    entries: list[Entry] = []
    at = offset + CHUNK_HEADER if offset == 0 else offset
    in_earlier_record = offset != 0
    end = offset + len(window)
    while True:
        start, data, expected = at, b"", (FULL, FIRST)
        while True:
            left = BLOCK - at % BLOCK
            if left < CHUNK_HEADER:
                at += left  # padding
            if at + CHUNK_HEADER > end:
                return entries, start
            crc, length, kind = struct.unpack_from("<IHB", window, at - offset)
            body = window[at + CHUNK_HEADER - offset : at + CHUNK_HEADER + length - offset]
            if in_earlier_record and kind in (MIDDLE, LAST):
                at += CHUNK_HEADER + length
                start = at
                continue
            in_earlier_record = False
            if kind not in expected or len(body) != length or zlib.crc32(body, _SEED[kind]) != crc:
                return entries, start
            at += CHUNK_HEADER + length
            data += body
            if kind in (FULL, LAST):
                break
            expected = (MIDDLE, LAST)
        entries.append(Entry(start, data))


_KINDS = {(True, True): FULL, (True, False): FIRST, (False, False): MIDDLE, (False, True): LAST}


def frame(records: Sequence[bytes], offset: int) -> bytes:
    """``records`` as chunks, for a log whose next write is at ``offset``."""
    out = bytearray()
    at = offset
    for data in records:
        first, rest = True, data
        while first or rest:
            left = BLOCK - at % BLOCK
            if left < CHUNK_HEADER:
                out += bytes(left)
                at += left
                left = BLOCK
            piece, rest = rest[: left - CHUNK_HEADER], rest[left - CHUNK_HEADER :]
            kind = _KINDS[first, not rest]
            out += struct.pack("<IHB", zlib.crc32(piece, _SEED[kind]), len(piece), kind)
            out += piece
            at += CHUNK_HEADER + len(piece)
            first = False
    return bytes(out)


#: How much of the log's end is read first; it doubles until a record before the tail
#: is in it. A run's end (exit, the last records) is a few hundred bytes.
FIRST_WINDOW = 2 * BLOCK


def _first_tail(entries: Sequence[Entry]) -> int:
    """Index of the run's first closing record (its exit), or len(entries) if none."""
    return next((i for i, e in enumerate(entries) if e.kinds & TAIL_FIELDS), len(entries))


def _end_of_log(handle: BinaryIO, size: int) -> tuple[list[Entry], int]:
    """The records at the log's end, from at least one before its exit (the whole log
    if need be), and where the readable log ends."""
    window = FIRST_WINDOW
    while True:
        offset = max(0, (size - window) // BLOCK * BLOCK)
        handle.seek(offset)
        entries, readable_end = scan(handle.read(size - offset), offset)
        if offset == 0 or _first_tail(entries) > 0:
            return entries, readable_end
        window *= 2


def insert_before_exit(
    path: Path, new: Sequence[tuple[int, bytes]], stream_id: str, exit_code: int
) -> None:
    """Add records (kind, message) to the log at ``path`` before its exit record.

    A log without one (the training was killed) gets the new records and an exit
    record with ``exit_code`` at its readable end. Raises WandbLogError or OSError;
    the log is unchanged then.
    """
    with path.open("rb") as handle:
        if handle.read(CHUNK_HEADER) != HEADER:
            raise WandbLogError("not a W&B transaction log of the known version (0)")
        size = os.fstat(handle.fileno()).st_size
        entries, readable_end = _end_of_log(handle, size)
        split = _first_tail(entries)
        if split == 0:
            raise WandbLogError("the log holds no record of the run before its exit")
        tail = entries[split:]
        cut = tail[0].start if tail else readable_end
        num = entries[split - 1].num + 1
        added = [record(kind, message, num + i, stream_id) for i, (kind, message) in enumerate(new)]
        num += len(added)
        if tail:
            added += [renumbered(e.data, num + i) for i, e in enumerate(tail)]
        else:
            added.append(record(RECORD_EXIT, exit_message(exit_code), num, stream_id))
        _replace(path, handle, cut, frame(added, cut))


def _copy(source: BinaryIO, target: BinaryIO, length: int) -> None:
    """The first ``length`` bytes of ``source``, copied in the kernel where it can."""
    source.seek(0)
    left = length
    try:
        while left > 0:
            copied = os.copy_file_range(source.fileno(), target.fileno(), left)
            if copied == 0:
                break
            left -= copied
    except (AttributeError, OSError):
        source.seek(length - left)
        target.seek(length - left)
    while left > 0:
        chunk = source.read(min(left, 1 << 20))
        if not chunk:
            raise WandbLogError("the log shrank while it was read")
        target.write(chunk)
        left -= len(chunk)


def _replace(path: Path, source: BinaryIO, keep: int, append: bytes) -> None:
    """The log's first ``keep`` bytes plus ``append``, renamed over the log."""
    mode = path.stat().st_mode & 0o777
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as target:
            _copy(source, target, keep)
            target.seek(keep)
            target.write(append)
            target.flush()
            os.fsync(target.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
