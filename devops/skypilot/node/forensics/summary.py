"""The one line a person reads at 3 a.m.: which rank is stuck, and where.

Processes stuck at the same place form a group. The odd group(s) out come first,
each process named with its pid and the innermost line of user code:
``rank 1 (pid 4242) in time.sleep at train.py:64 (_run_epoch); ranks 0: in
all_reduce at train.py:70 (_run_epoch)``. Which group is odd, in order:

1. the one holding a rank the heartbeat monitor saw stop first, when it knows;
2. else the groups not waiting in a collective, when some are (the others wait
   for them);
3. else, all waiting, the groups in a point-to-point ``send``/``recv`` while the
   others wait in a collective (they never joined it);
4. else the smallest group(s), when the groups differ in size.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence

from devops.skypilot.node.forensics.capture import Captured
from devops.skypilot.node.forensics.stacks import Stack

#: The callable on a line of code: ``time.sleep`` in ``time.sleep(30)``.
_CALL = re.compile(r"([A-Za-z_][\w.]*)\s*\(")
#: Processes named one by one in a group before "and N more".
_NAMED = 3


def _name(item: Captured, with_pid: bool) -> str:
    rank = item.target.rank
    if rank is None:
        return f"pid {item.target.pid}"
    return f"rank {rank} (pid {item.target.pid})" if with_pid else f"rank {rank}"


def _names(items: Sequence[Captured], with_pid: bool) -> str:
    if not with_pid and all(item.target.rank is not None for item in items):
        ranks = ", ".join(str(item.target.rank) for item in items[: _NAMED * 2])
        more = f" and {len(items) - _NAMED * 2} more" if len(items) > _NAMED * 2 else ""
        return f"rank{'s' if len(items) > 1 else ''} {ranks}{more}"
    named = ", ".join(_name(item, with_pid) for item in items[:_NAMED])
    more = f" and {len(items) - _NAMED} more" if len(items) > _NAMED else ""
    return named + more


def where(stack: Stack) -> str:
    """``in time.sleep at train.py:64 (_run_epoch)``: the call and the user's line."""
    innermost = stack.frames[0]
    user = stack.user_frame()
    if user is None:
        return f"in {innermost.function} at {innermost.where}"
    if user is innermost:
        # The call it is stuck in is C (time.sleep, a socket read): py-spy and
        # faulthandler show no frame for it, the line of code names it.
        call = _CALL.search(user.source())
        callee = call.group(1) if call else ""
    else:
        callee = innermost.function
    inside = f"in {callee} " if callee else ""
    return f"{inside}at {user.where} ({user.function})"


def _odd(groups: list[list[Captured]], suspects: Collection[int]) -> list[list[Captured]]:
    if len(groups) < 2 and not suspects:
        return []
    if suspects:
        marked = [g for g in groups if any(item.target.rank in suspects for item in g)]
        if (marked and len(marked) < len(groups)) or len(groups) == 1:
            return marked
    waiting = [g for g in groups if g[0].stack is not None and g[0].stack.in_collective()]
    if waiting and len(waiting) < len(groups):
        return [g for g in groups if g not in waiting]
    # All wait, some in a send/recv while the others wait in a collective: those never
    # joined the collective the others wait in (a desync), so they are the odd ones.
    peer = [g for g in waiting if g[0].stack is not None and g[0].stack.in_point_to_point()]
    if peer and len(peer) < len(groups):
        return peer
    smallest = min(len(g) for g in groups)
    if smallest < max(len(g) for g in groups):
        return [g for g in groups if len(g) == smallest]
    return []


def summarize(results: Sequence[Captured], suspects: Collection[int] = ()) -> str:
    """One line: the odd process(es) out and where, then the rest, then what had no stack."""
    with_stack = [item for item in results if item.stack is not None]
    ranked = [item for item in with_stack if item.target.rank is not None]
    # Under a launcher the ranks are what matters; the launcher's own stack is noise.
    pool = sorted(ranked or with_stack, key=lambda item: (item.target.rank or 0, item.target.pid))
    groups: dict[tuple[tuple[str, str, int], ...], list[Captured]] = {}
    for item in pool:
        assert item.stack is not None
        groups.setdefault(item.stack.signature(), []).append(item)
    ordered = list(groups.values())
    odd = _odd(ordered, suspects)
    parts = []
    for group in odd:
        assert group[0].stack is not None
        parts.append(f"{_names(group, with_pid=True)} {where(group[0].stack)}")
    for group in ordered:
        if group not in odd:
            assert group[0].stack is not None
            parts.append(f"{_names(group, with_pid=False)}: {where(group[0].stack)}")
    missing = [item for item in results if item.stack is None and item.target.rank is not None]
    if not ranked:
        missing = [item for item in results if item.stack is None] if not with_stack else []
    if missing:
        reasons = sorted({item.error or "unknown" for item in missing})
        parts.append(f"no stack for {_names(missing, with_pid=True)} ({'; '.join(reasons)})")
    return "; ".join(parts) if parts else "no process to look at"
