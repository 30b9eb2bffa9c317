"""The fault matrix's closing line: ``N scenarios, N passed`` (skips and failures follow)."""

from __future__ import annotations

import pytest

MATRIX = "tests/faults/test_fault_matrix.py"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    outcomes: dict[str, str] = {}
    for status in ("passed", "failed", "error", "skipped", "xfailed", "xpassed"):
        for report in terminalreporter.stats.get(status, []):
            nodeid = getattr(report, "nodeid", "")
            if not nodeid.startswith(MATRIX):
                continue
            # A failed setup or teardown (a leaked process) fails the scenario.
            if outcomes.get(nodeid) not in ("failed", "error"):
                outcomes[nodeid] = status
    if not outcomes:
        return
    counts = {status: list(outcomes.values()).count(status) for status in set(outcomes.values())}
    line = f"{len(outcomes)} scenarios, {counts.get('passed', 0)} passed"
    for status in ("failed", "error", "skipped", "xfailed", "xpassed"):
        if counts.get(status):
            line += f", {counts[status]} {status}"
    terminalreporter.write_line(line)
