"""The lines of a block of output that may match a table of patterns, found without
splitting the block.

A chatty command prints millions of lines a second; looking at each line in
Python caps it at a few MB/s. Instead the block's bytes are searched in C for the
literal needles (:mod:`.needles`: ``memchr`` for rare bytes, else RE2 or one
``find`` each), and for a pattern without needles, its regular expression in
MULTILINE mode over the decoded block. Only the lines where something was found
are cut out and decoded, to be classified line by line as before. They are a
superset of the lines that match, so the result is exactly the per-line one:

- a needle is a literal every match of its pattern contains; its UTF-8 bytes are
  in a line's bytes exactly when it is in the line decoded with ``replace`` (the
  decoder never swallows a valid sequence into a replacement character; a needle
  that holds one, or a surrogate, is no needle: its pattern is searched as below);
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
from typing import AnyStr

from devops.skypilot.node.monitors.needles import NeedleFinder

#: What makes a match depend on text outside its line: lookarounds, \A, \Z.
_NOT_LINE_LOCAL = re.compile(r"\(\?<?[=!]|\\[AZ]")


class LineScan:
    """Finds candidate lines for a table of (pattern, needles) entries."""

    def __init__(self, entries: Iterable[tuple[re.Pattern[str], tuple[str, ...]]]) -> None:
        needles: set[str] = set()
        expressions: list[re.Pattern[str]] = []
        self.every_line = False
        for pattern, own in entries:
            if own and all(_searchable(needle) for needle in own):
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
        self.finder = NeedleFinder(needle.encode() for needle in self.needles)

    def candidates(
        self, block: bytes, start: int = 0, end: int | None = None
    ) -> list[tuple[int, str]]:
        """(index of the line within the span, line), in order, for every line of
        ``block[start:end]`` that may match; the span is whole lines joined by newlines
        (UTF-8, maybe invalid). The needles are searched in place; only an expression
        without needles needs the span decoded (a copy)."""
        end = len(block) if end is None else end
        if self.every_line:
            return list(enumerate(_text(block[start:end]).split("\n")))
        starts = self.finder.line_starts(block, start, end)
        found = dict(_lines_at(block, starts, b"\n", start, end))
        if self.expressions:
            text = _text(block[start:end])
            starts = set()  # in the text now
            for expression in self.expressions:
                match = expression.search(text)
                while match is not None:
                    starts.add(text.rfind("\n", 0, match.start()) + 1)
                    after = text.find("\n", match.start())
                    match = None if after < 0 else expression.search(text, after + 1)
            found.update(_lines_at(text, starts, "\n", 0, len(text)))
        return sorted(found.items())


def _searchable(needle: str) -> bool:
    """Whether the needle's bytes can stand for it in undecoded output (see above)."""
    return "\ufffd" not in needle and not any("\ud800" <= char <= "\udfff" for char in needle)


def _text(data: bytes) -> str:
    return str(data, "utf-8", "replace")


def _lines_at(
    text: AnyStr, starts: set[int], newline: AnyStr, start: int, end: int
) -> Iterator[tuple[int, str]]:
    """(index within ``text[start:end]``, line) of its lines that begin at ``starts``."""
    index, counted = 0, start
    for begin in sorted(starts):
        index += text.count(newline, counted, begin)
        counted = begin
        stop = text.find(newline, begin, end)
        line = text[begin : stop if stop >= 0 else end]
        yield index, line if isinstance(line, str) else _text(line)
