"""The lines of a block of output that may match a table of patterns, found without
splitting the block.

A chatty command prints millions of lines a second; looking at each line in
Python caps it at a few MB/s. Instead the whole block is searched in C: for the
literal needles (all at once with RE2, one ``str.find`` each without it), and for
a pattern without needles, its regular expression in MULTILINE mode. Only the
lines where something was found are cut out, to be classified line by line as
before. They are a superset of the lines that match, so the result is exactly
the per-line one:

- a needle is a literal every match of its pattern contains;
- a match within one line is also a match of the MULTILINE expression at the same
  place in the block (``^``, ``$``, ``\\b`` see a newline where the line ends).
  A match the block search finds across lines only makes its first line a
  candidate, and the search goes on from the next line.

Patterns for which the second point does not hold (lookarounds, which may look
past the line's end; ``\\A``, ``\\Z``) make every line a candidate: correct, and as
slow as before.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any, AnyStr

try:  # RE2 finds every needle in one pass over the block, ~10x faster than one find each
    import re2
except ImportError:  # the fastlogs extra; without it the scan is slower, not different
    re2 = None

#: What makes a match depend on text outside its line: lookarounds, \A, \Z.
_NOT_LINE_LOCAL = re.compile(r"\(\?<?[=!]|\\[AZ]")


class LineScan:
    """Finds candidate lines for a table of (pattern, needles) entries."""

    def __init__(self, entries: Iterable[tuple[re.Pattern[str], tuple[str, ...]]]) -> None:
        needles: set[str] = set()
        expressions: list[re.Pattern[str]] = []
        self.every_line = False
        for pattern, own in entries:
            if own:
                needles.update(own)
            elif _NOT_LINE_LOCAL.search(pattern.pattern):
                self.every_line = True
            else:
                expressions.append(re.compile(pattern.pattern, pattern.flags | re.MULTILINE))
        # A needle that contains another finds nothing the shorter one misses.
        self.needles = tuple(
            sorted(n for n in needles if not any(o != n and o in n for o in needles))
        )
        self.expressions = tuple(expressions)
        # On the UTF-8 bytes: RE2 maps every match back to a str index otherwise (~4x slower).
        alternatives = "|".join(re.escape(needle) for needle in self.needles).encode()
        self._any_needle: Any = re2.compile(alternatives) if re2 and self.needles else None

    def candidates(self, block: str) -> list[tuple[int, str]]:
        """(index of the line within the block, line), in order, for every line that
        may match; ``block`` is whole lines joined by newlines."""
        if self.every_line:
            return list(enumerate(block.split("\n")))
        found: dict[int, str] = {}
        if self._any_needle is not None:
            data = block.encode("utf-8", "surrogatepass")  # round-trips any str
            starts = {
                data.rfind(b"\n", 0, hit.start()) + 1 for hit in self._any_needle.finditer(data)
            }
            found.update(_lines_at(data, starts, b"\n"))
        else:
            starts = set()
            for needle in self.needles:
                hit = block.find(needle)
                while hit >= 0:
                    starts.add(block.rfind("\n", 0, hit) + 1)
                    after = block.find("\n", hit)
                    hit = -1 if after < 0 else block.find(needle, after + 1)
            found.update(_lines_at(block, starts, "\n"))
        starts = set()
        for expression in self.expressions:
            match = expression.search(block)
            while match is not None:
                starts.add(block.rfind("\n", 0, match.start()) + 1)
                after = block.find("\n", match.start())
                match = None if after < 0 else expression.search(block, after + 1)
        found.update(_lines_at(block, starts, "\n"))
        return sorted(found.items())


def _lines_at(text: AnyStr, starts: set[int], newline: AnyStr) -> Iterator[tuple[int, str]]:
    """(index, line) of the lines of ``text`` that begin at ``starts``."""
    index, counted = 0, 0
    for start in sorted(starts):
        index += text.count(newline, counted, start)
        counted = start
        end = text.find(newline, start)
        line = text[start : end if end >= 0 else len(text)]
        yield index, line if isinstance(line, str) else line.decode("utf-8", "surrogatepass")
