"""What the BLAS and OpenMP families share: limiters over threadpoolctl's
controllers, sizes read through those limiters."""

from __future__ import annotations

from . import Pool, Scan


def controllers_of(scan: Scan, internal_api: str, prefix: str | None = None) -> list:
    return [c for c in scan.controllers if c.internal_api == internal_api
            and (prefix is None or getattr(c, "prefix", None) == prefix)]


def pools_from_limiters(family, limiters) -> list[Pool]:
    pools = []
    for lim in limiters:
        if not lim.driven:
            pools.append(Pool(family.library, family.api, None, lim.path, source="not read",
                              notes=(f"size not read: {lim.note}",), pool=family.key))
            continue
        pools.append(Pool(family.library, family.api, lim.get(), lim.path, source="runtime getter",
                          notes=(lim.note,) if lim.note else (), pool=family.key))
    return pools
