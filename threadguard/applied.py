"""What one budget did to one library or setting: the rows of ``budget.report()``.

A named tuple: built on every entry for every limit, it must cost no more
than a plain tuple, yet read by name.
"""

from __future__ import annotations

from typing import NamedTuple


class Applied(NamedTuple):
    target: str  # library name, an environment variable, "affinity", "memory policy"
    scope: str  # process | thread
    before: object
    after: object
    status: str  # applied | refused | skipped
    path: str | None = None
    note: str | None = None
