"""The one exception type users see for bad input.

Every check on user input raises :class:`CrossdiffError` with a message that names the bad
value and says what to do, so the CLI can print it without a traceback.
"""


class CrossdiffError(ValueError):
    """Bad input or state, with a message meant for the user (what was wrong, how to fix it)."""
