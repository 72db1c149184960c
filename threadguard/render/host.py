"""``threadguard host``: the host ledger's participants, as a small table."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .._fs import format_cpulist

COLUMNS = ("pid", "asked", "granted", "CPUs", "since", "command")


def render_host(snap: dict, console: Console) -> None:
    rows = snap["participants"]
    if not rows:
        console.print(f"host ledger {escape(snap['ledger'])}: no participants")
        return
    console.print(f"host ledger {escape(snap['ledger'])}: {len(rows)} participant(s), "
                  f"[bold]{snap['granted']}[/bold] threads granted of {snap['capacity']} CPUs"
                  + ("  [red]oversubscribed: one thread each is the least a grant "
                     "can be[/red]" if snap["oversubscribed"] else ""))
    cells = [[str(r["pid"]), str(r["asked"]), str(r["granted"]),
              format_cpulist(r["cpus"]) if r["cpus"] else "-",
              r["since"].split("T")[-1],  # the time; --json has the date
              " ".join(r["command"].split())] for r in rows]
    # The command is cut at the terminal's edge, as ps does (--json has it whole):
    # the numbers always stay whole.
    fixed = sum(max(len(COLUMNS[i]), *(len(c[i]) for c in cells)) + 3 for i in range(5)) + 4
    room = max(8, console.width - fixed)
    table = Table(title_justify="left")
    for name in COLUMNS:
        table.add_column(name, justify="right" if name in ("pid", "asked", "granted") else "left",
                         no_wrap=True)
    for c in cells:
        command = c[5] if len(c[5]) <= room else c[5][:room - 1] + "…"
        table.add_row(*c[:5], escape(command))
    console.print(table)
