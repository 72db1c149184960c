"""The doctor's console view: findings grouped by severity, then a summary.

The layout is made once as (style, text) lines; a terminal gets them through
rich (colours, unless NO_COLOR), anything else as plain text, without
importing rich at all (the doctor runs in CI logs and pipes).
"""

from __future__ import annotations

import os
import sys

from ..doctor.findings import SEVERITIES

_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def layout(findings, *, target: str = "", notes=(), checked=(),
           quiet: bool = False) -> list[tuple[str, str]]:
    """The doctor's lines: what it checked, then the findings and a count;
    ``quiet``: the findings only."""
    lines: list[tuple[str, str]] = []
    if target and not quiet:
        lines.append(("bold", f"threadguard doctor: {target}"))
    if not quiet:
        width = max((len(label) for label, _ in checked), default=0)
        lines.extend(("dim", f"  {label:<{width}}  {text}") for label, text in checked)
    for severity in SEVERITIES:
        group = [f for f in findings if f.severity == severity]
        if group:
            lines.append(("", ""))
        for f in group:
            lines.append((_STYLE[severity], f"{severity} {f.code} {f.title}"))
            lines.extend(("", f"    {line}") for line in f.evidence if line)
            if f.fix:
                lines.append(("green", f"    fix: {f.fix}"))
    if quiet:
        return lines[1:] if lines[:1] == [("", "")] else lines
    lines.extend(("dim", f"note: {note}") for note in notes)
    lines.append(("", ""))
    if not findings:
        lines.append(("green", "no problems found"))
    else:
        counts = [(s, sum(1 for f in findings if f.severity == s)) for s in SEVERITIES]
        lines.append(("", ", ".join(f"{n} {s}{'s' if n != 1 else ''}" for s, n in counts)))
    return lines


def render_findings(findings, file=None, *, target: str = "", notes=(), checked=(),
                    quiet: bool = False) -> None:
    file = file or sys.stdout
    lines = layout(findings, target=target, notes=notes, checked=checked, quiet=quiet)
    if not lines:
        return
    if file.isatty() and not os.environ.get("NO_COLOR"):
        from rich.console import Console
        from rich.text import Text
        console = Console(file=file, highlight=False)
        for style, text in lines:
            console.print(Text(text, style=style or ""), soft_wrap=True)
    else:
        file.write("\n".join(text for _, text in lines) + "\n")
