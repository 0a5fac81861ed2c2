"""User-facing errors: the CLI prints these as one line, without a traceback."""


class LowbitError(Exception):
    """A mistake the user can fix; the message says what to do."""
