"""Misbehaving commands for the fault matrix, run as real processes under the runner.

``python children.py MODE ARGS...``. Modes that need the test to act at the
right moment write ``$FAULT_READY`` (a path) when they reach it; modes that wait
for the test poll for ``$FAULT_GO``.

The children themselves live in modules by what they do: :mod:`lifecycle` (how they
run and end), :mod:`output`, :mod:`disk` (the state dir), :mod:`trees` (processes
left behind), on :mod:`moments` (the cues they share with the test).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from tests.faults.disk import (
    beat_into_full_disk,
    fill_log_disk,
    remove_state_dir,
    remove_state_dir_while_beating,
    replace_state_dir_with_file,
)
from tests.faults.lifecycle import (
    beat_forever,
    checkpoint_on_usr1,
    crash,
    delete_heartbeat,
    hang_after_beats,
    hang_on_fifo,
    hang_ready_on_sigterm,
    kill_self,
    wait_then_exit,
)
from tests.faults.moments import beat_for
from tests.faults.output import (
    close_stdout,
    fatal_split_across_reads,
    flood,
    flood_lines,
    invalid_utf8,
    print_after_go,
    print_env,
    random_bytes,
    say,
)
from tests.faults.trees import double_fork, exit_leaving_helper, fork_bomb, leave_tree, pid_hopper

MODES: dict[str, Callable[..., int]] = {
    "crash": crash,
    "kill-self": kill_self,
    "hang": hang_after_beats,
    "hang-on-fifo": hang_on_fifo,
    "fork-bomb": fork_bomb,
    "double-fork": double_fork,
    "close-stdout": close_stdout,
    "flood": flood,
    "invalid-utf8": invalid_utf8,
    "remove-state-dir": remove_state_dir,
    "remove-state-dir-while-beating": remove_state_dir_while_beating,
    "replace-state-dir-with-file": replace_state_dir_with_file,
    "wait-then-exit": wait_then_exit,
    "delete-heartbeat": delete_heartbeat,
    "beat-for": beat_for,
    "beat-forever": beat_forever,
    "print-after-go": print_after_go,
    "beat-into-full-disk": beat_into_full_disk,
    "exit-leaving-helper": exit_leaving_helper,
    "hang-ready-on-sigterm": hang_ready_on_sigterm,
    "pid-hopper": pid_hopper,
    "checkpoint-on-usr1": checkpoint_on_usr1,
    "leave-tree": leave_tree,
    "say": say,
    "random-bytes": random_bytes,
    "print-env": print_env,
    "flood-lines": flood_lines,
    "fatal-split-across-reads": fatal_split_across_reads,
    "fill-log-disk": fill_log_disk,
}


if __name__ == "__main__":
    mode, *arguments = sys.argv[1:]
    sys.exit(MODES[mode](*arguments))
