"""The one way records are timestamped: ISO 8601 in UTC, to the second.

Manifests, run records and round records compare and sort these strings, so they must all
come from the same format.
"""

from __future__ import annotations

import time


def now_iso() -> str:
    """The current UTC time as 'YYYY-MM-DDTHH:MM:SSZ'."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
