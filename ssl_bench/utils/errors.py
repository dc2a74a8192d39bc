"""Error messages as other messages quote them."""

from __future__ import annotations


def first_line(err: Exception) -> str:
    """The first line of an exception's message (a parser's message may go on for lines)."""
    return str(err).strip().splitlines()[0]
