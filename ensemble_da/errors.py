"""The one exception type for bad user input (DESIGN.md §7: exit 2, one line `error: ...`)."""

__all__ = ["InputError"]


class InputError(ValueError):
    """Bad input from a user: a file, key, value or channel; the message names it."""
