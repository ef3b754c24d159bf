"""Names users give to datasets, runs and models: one rule, so every store key stays predictable."""

from __future__ import annotations

import re

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_NAME_RE = re.compile(NAME_PATTERN)


def validate_name(value: str, what: str = "name") -> str:
    """`value` if it is a valid name; ValueError naming `what` and the rule otherwise."""
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ValueError(f"invalid {what} {value!r}: use 1-64 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    return value
