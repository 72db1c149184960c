"""How the runtimes read their thread variables, as their C code does.

- OpenMP runtimes (GNU, Intel, LLVM) read ``OMP_NUM_THREADS`` as a list of
  positive integers, one per nesting level ("4,2"); anything else ("abc",
  "0", "1.0", "all", non-ASCII digits) is ignored with a warning.
- OpenBLAS parses ``OPENBLAS_NUM_THREADS`` (then ``GOTO_NUM_THREADS``, then
  ``OMP_NUM_THREADS``) with ``atoi``: "4,2" is 4, and "abc", "", "-3", "0"
  give 0, which means all cores.

Digits are ASCII only: C's ``isdigit`` and ``strtol`` know nothing of "٣"
or "４", which Python's ``int()`` would accept.
"""

from __future__ import annotations

import re

OPENMP_LIST = re.compile(r"^[ \t\n\v\f\r]*[1-9][0-9]*([ \t\n\v\f\r]*,[ \t\n\v\f\r]*[1-9][0-9]*)*"
                         r"[ \t\n\v\f\r]*$")
_ATOI = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)")
_INT_MAX = 2**31 - 1
_LONG_MAX, _LONG_MIN = 2**63 - 1, -(2**63)


def openmp_value(text: str | None) -> tuple[int | None, str | None]:
    """What an OpenMP runtime does with ``OMP_NUM_THREADS``: (threads, problem)."""
    if text is None or text.strip(" \t\n\v\f\r") == "":
        return None, None
    if not OPENMP_LIST.match(text):
        # Checked with the runtimes: GNU and Intel warn and use every CPU;
        # LLVM's libomp 14 reads uninitialised memory as the count: a random
        # number, "Out of heap memory", an assertion, at times a hang.
        return None, ("not a list of positive integers: GNU and Intel OpenMP ignore it (and "
                      "warn), LLVM OpenMP misreads it (a random count; it may abort or hang)")
    first = text.split(",")[0].strip(" \t\n\v\f\r")
    if len(first) > 10 or int(first) > _INT_MAX:
        return None, "larger than the runtimes accept: they ignore it (and warn)"
    return int(first), None


def atoi(text: str) -> int:
    """glibc's atoi, ``(int) strtol(text, NULL, 10)``: leading whitespace, an
    optional sign, ASCII digits; anything else stops. strtol clamps to the
    64-bit range and the cast keeps the low 32 bits ("4294967297" is 1, a
    5,000-digit number is -1)."""
    m = _ATOI.match(text)
    if not m:
        return 0
    digits = m.group(1)
    negative = digits.startswith("-")
    significant = digits.lstrip("+-").lstrip("0") or "0"
    if len(significant) > 19:  # beyond any long: no int() of a huge string
        value = _LONG_MIN if negative else _LONG_MAX
    else:
        value = max(_LONG_MIN, min(_LONG_MAX, int(digits)))
    return (value + 2**31) % 2**32 - 2**31


def openblas_value(environ) -> tuple[str | None, int | None]:
    """(variable used, threads; 0 = all cores) as OpenBLAS reads its environment."""
    for name in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS"):
        if name in environ:
            value = atoi(environ[name])
            return name, (value if value > 0 else 0)
    return None, None


def first_set(environ, names) -> int | None:
    """The first of ``names`` that sets a valid thread count (MKL reads
    ``MKL_NUM_THREADS`` then ``OMP_NUM_THREADS``; torch and BLIS likewise)."""
    for name in names:
        value, _ = openmp_value(environ.get(name))
        if value:
            return value
    return None
