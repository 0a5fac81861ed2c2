"""User-facing errors: the CLI prints these as one line, without a traceback."""


class LowbitError(Exception):
    """A mistake the user can fix; the message says what to do."""


def is_number(value: object) -> bool:
    """An int or a float, not a bool (``True`` is an int to Python, never a setting's number)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def require_positive(
    value: object, name: str, hint: str = "", *, zero_ok: bool = False
) -> None:
    """A ``LowbitError`` unless ``value`` is a positive int or float (not a bool, not NaN),
    or zero with ``zero_ok``; ``hint`` is added to the message (e.g. what else ``name`` may
    be)."""
    if not (is_number(value) and (value >= 0 if zero_ok else value > 0)):
        kind = "a number >= 0" if zero_ok else "a positive number"
        raise LowbitError(f"{name} must be {kind}{hint}, got {value!r}")
