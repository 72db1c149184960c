"""A recording as a picture: busy threads stacked by pool against the CPUs,
and the run-delay ratio below (matplotlib, imported only here)."""

from __future__ import annotations

from ..sampler import Recording


# One colour per pool, the same in every picture, so two timelines compare.
_OWN_COLORS = {"main": "#4c72b0", "python": "#dd8452", "other": "#64b5cd"}


def _color(pool: str) -> str:
    from ..pools import family
    fam = family(pool)
    return fam.color if fam is not None else _OWN_COLORS.get(pool, "#bbbbbb")


def plot_timeline(rec: Recording, paths: list[str], title: str = "") -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("plots need matplotlib: pip install 'threadguard[plot]'") from err
    series = rec.series()
    times = [p["t"] for p in series]
    pools = sorted({pool for p in series for pool in p["busy_by_pool"]})
    stacks = [[p["busy_by_pool"].get(pool, 0) for p in series] for pool in pools]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 5), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1]})
    if times and stacks:
        top.stackplot(times, stacks, labels=pools, step="pre", alpha=0.85,
                      colors=[_color(pool) for pool in pools])
    top.axhline(rec.effective_cpus, color="black", linestyle="--",
                label=f"CPUs this process may use ({rec.effective_cpus})")
    top.set_ylabel("running or waiting threads")
    top.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    # A command line is text, not mathtext: "sh -c 'echo $$'" must not parse.
    top.set_title(title or f"process {rec.pid}", parse_math=False)
    bottom.plot(times, [p["run_delay_ratio"] for p in series], color="crimson")
    bottom.set_ylabel("run-delay ratio")
    bottom.set_xlabel("seconds")
    fig.tight_layout()
    for path in paths:
        fig.savefig(path)
    plt.close(fig)
