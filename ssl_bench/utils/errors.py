"""The errors the command line explains, and error messages as other messages quote them."""

from __future__ import annotations


def first_line(err: Exception) -> str:
    """The first line of an exception's message (a parser's message may go on for lines)."""
    return str(err).strip().splitlines()[0]


class ExplainedError(Exception):
    """An error whose message says what is wrong and where (the file, key or folder), so that the command line
    prints it alone and exits with status 2 instead of a traceback. Each module's error class derives from it beside
    its builtin base (``class ConfigError(ExplainedError, ValueError)``): ``ssl-bench`` catches this one class and
    so need not import every module that defines one (torch and MONAI among them) before it parses its arguments."""
