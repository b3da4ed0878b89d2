"""The one exception type the CLI turns into a one-line message and a non-zero exit."""

import reprlib
from typing import Any


class CarvisError(Exception):
    """A user-facing error: one line that says what, which value, and what to do."""

    exit_code = 2

    def __str__(self) -> str:
        # One line whatever a library's text put in it (a value quoted from a file may hold
        # line breaks too): the CLI prints exactly one line per error.
        text = super().__str__()
        if "\n" not in text and "\r" not in text:
            return text
        return " ".join(part.strip() for part in text.splitlines() if part.strip())


_SHOWN = reprlib.Repr()
_SHOWN.maxstring = _SHOWN.maxother = 80
_SHOWN.maxlong = 40
_SHOWN.maxlevel = 3


def shown(value: Any) -> str:
    """A value as an error quotes it: its repr, cut short (a deep list or a 400-digit number
    from a file or a request stays one short line)."""
    try:
        text = _SHOWN.repr(value)
    except (ValueError, RecursionError):  # an int past Python's 4300-digit str limit
        return f"<{type(value).__name__}>"
    return text if len(text) <= 120 else text[:117] + "..."


def first_line(exc: BaseException) -> str:
    """The first line of an exception's text, at most 200 characters."""
    text = str(exc).strip().splitlines()
    line = text[0].strip() if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."
