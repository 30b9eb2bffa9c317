"""Run PyTorch's own flight-recorder analyser on a directory of dumps; print one JSON line.

``python -m devops.skypilot.node.forensics.frtrace DIR PREFIX``: the runner starts
this in a child process (:mod:`.flight`) so that torch is imported only when dumps
exist, never in the runner, and the child can be killed at the bound. It calls the
pieces ``torchfrtrace`` is made of (``torch.distributed.flight_recorder``: read the
dumps, match every rank's collectives) with ``--allow-incomplete-ranks``, so a rank
that left no dump does not stop the analysis, and prints what the summary needs:

``{"ranks": [dumped ranks], "expected": [ranks of the groups], "stuck": {...} | null}``

where ``stuck`` is the first collective some rank never joined (torch's
``missing_ranks``), else the last collective of the dumps (what the ranks were in).
Exit 2 with one line on stderr when torch has no analyser.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import sysconfig
from typing import Any

#: Frames under these are torch's or Python's own: the user's line is the first other.
_STDLIB = tuple({sysconfig.get_paths()[name] for name in ("stdlib", "platstdlib")})
_PACKAGES = (f"{os.sep}site-packages{os.sep}", f"{os.sep}dist-packages{os.sep}")


def _where(frames: list[dict[str, Any]]) -> str | None:
    for frame in frames:
        filename = str(frame.get("filename", ""))
        if not filename or filename.startswith(_STDLIB):
            continue
        if not any(part in filename for part in _PACKAGES):
            return f"{os.path.basename(filename)}:{frame.get('line')} ({frame.get('name')})"
    return None


def _collective(item: Any) -> dict[str, Any]:
    return {
        "name": str(item.collective_name).split(":", 1)[-1],
        "seq": item.collective_seq_id,
        "group": item.pg_desc,
        "state": item.collective_state,
        "missing": sorted(item.missing_ranks or ()),
        "where": _where(list(item.collective_frames or ())),
    }


def analyse(directory: str, prefix: str) -> dict[str, Any]:
    try:
        from torch.distributed.flight_recorder.components.builder import build_db
        from torch.distributed.flight_recorder.components.config_manager import JobConfig
        from torch.distributed.flight_recorder.components.loader import read_dir
    except ImportError as error:
        raise SystemExit(f"no flight-recorder analyser in this torch ({error})") from None
    args = JobConfig().parse_args([directory, "--allow-incomplete-ranks", "--prefix", prefix])
    # The analyser reports by printing; the runner wants only the JSON line.
    with contextlib.redirect_stdout(io.StringIO()):
        details, version = read_dir(args)
        db = build_db(details, args, version)
    ranks = sorted(int(dump["rank"]) for dump in details.values())
    expected = sorted({int(member.global_rank) for member in db.memberships})
    collectives = list(db.collectives)
    stuck = next((item for item in collectives if item.missing_ranks), None)
    if stuck is None and collectives:
        stuck = max(collectives, key=lambda item: item.id)
    return {
        "ranks": ranks,
        "expected": expected,
        "stuck": _collective(stuck) if stuck is not None else None,
    }


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit("usage: frtrace DIR PREFIX")
    print(json.dumps(analyse(sys.argv[1], sys.argv[2])))


if __name__ == "__main__":
    main()
