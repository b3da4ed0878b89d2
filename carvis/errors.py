"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class CarvisError(Exception):
    """A user-facing error: one line that says what, which value, and what to do."""

    exit_code = 2
