"""The one exception type users see for bad input.

Every check on user input raises :class:`CrossdiffError` with a message that names the bad
value and says what to do, so the CLI can print it without a traceback.
"""


class CrossdiffError(ValueError):
    """Bad input or state, with a message meant for the user (what was wrong, how to fix it)."""


def reject_unknown_fields(
    cls: type, data: dict, what: str, *, suffix: str = "", list_known: bool = False
) -> None:
    """Raise a CrossdiffError naming the keys of ``data`` that are not fields of the dataclass
    ``cls`` (every config's ``from_dict`` checks this, so a typo in a file is an error, not a
    silently ignored setting)."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        hint = f"; known keys: {sorted(known)}" if list_known else ""
        raise CrossdiffError(f"unknown {what} {unknown}{hint}{suffix}")
