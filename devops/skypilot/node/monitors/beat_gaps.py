"""The longest gaps between beats, kept in the state dir, and the timeout derived from them.

``--derived-timeout-factor X`` (opt-in): every attempt records, in
``<state-dir>/beat-gaps.json``, how many gaps between two beats the heartbeat
monitor saw after the first beat, the longest of them (job-wide, and per rank
under torchrun) and its check interval. A later attempt's heartbeat timeout is

    min(--heartbeat-timeout, X * max over earlier attempts of (longest gap + check interval))

once at least :data:`MIN_GAPS` gaps were seen in all. As NVRx's ``timeouts_calc``
(the longest gap times a safety factor, 5 by default), but: the gaps of every
earlier attempt count, not one run's, so a checkpoint seen once keeps its gap; a
gap is seen up to one check late, so the check interval is added; too few gaps
derive nothing; and the result never exceeds the configured timeout, which stays
the deadline for the first beat (startup is not a gap).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from devops.skypilot.common.files import write_atomic

logger = logging.getLogger(__name__)

FILE = "beat-gaps.json"
#: Gaps needed, over all earlier attempts, before a timeout is derived from them.
MIN_GAPS = 5
#: Attempts kept in the file: the most recent.
KEPT = 50


@dataclass(frozen=True)
class Gaps:
    """What one attempt saw: ``count`` gaps, the ``longest``, checked every ``lag`` s."""

    count: int
    longest: float
    lag: float


def load_gaps(state_dir: Path) -> list[Gaps]:
    """Earlier attempts' gaps; a missing or unreadable file is no history."""
    try:
        data = json.loads((state_dir / FILE).read_text())
        return [
            Gaps(int(item["count"]), float(item["longest"]), float(item["lag"])) for item in data
        ]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, TypeError, KeyError) as error:
        logger.warning("skyguard: ignoring %s: %s", state_dir / FILE, error)
        return []


def save_gaps(state_dir: Path, gaps: Gaps) -> None:
    """Append this attempt's gaps (atomic replace); a failure is logged, never raised."""
    history = [*load_gaps(state_dir), gaps][-KEPT:]
    try:
        write_atomic(state_dir / FILE, json.dumps([asdict(item) for item in history]))
    except OSError as error:
        logger.warning("skyguard: could not record the beat gaps: %s", error)


def derive(history: list[Gaps], factor: float, configured: float) -> tuple[float, str] | None:
    """The derived timeout and how it was derived; None while there is too little to go on."""
    seen = [item for item in history if item.count]
    if factor <= 0 or sum(item.count for item in seen) < MIN_GAPS:
        return None
    worst = max(seen, key=lambda item: item.longest + item.lag)
    timeout = min(configured, factor * (worst.longest + worst.lag))
    how = (
        f"heartbeat timeout {timeout:.1f}s = min({configured:g}s, {factor:g} x "
        f"({worst.longest:.2f}s longest gap + {worst.lag:.2f}s check interval)) over "
        f"{sum(item.count for item in seen)} gaps in {len(seen)} earlier attempt(s)"
    )
    return timeout, how
