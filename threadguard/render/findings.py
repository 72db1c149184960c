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


def layout(findings, *, target: str = "", notes=()) -> list[tuple[str, str]]:
    lines: list[tuple[str, str]] = []
    if target:
        lines.append(("bold", f"threadguard doctor: {target}"))
    for severity in SEVERITIES:
        group = [f for f in findings if f.severity == severity]
        if group:
            lines.append(("", ""))
        for f in group:
            lines.append((_STYLE[severity], f"{severity} {f.code} {f.title}"))
            lines.extend(("", f"    {line}") for line in f.evidence if line)
            if f.fix:
                lines.append(("green", f"    fix: {f.fix}"))
    lines.extend(("dim", f"note: {note}") for note in notes)
    lines.append(("", ""))
    if not findings:
        lines.append(("green", "no problems found"))
    else:
        counts = [(s, sum(1 for f in findings if f.severity == s)) for s in SEVERITIES]
        lines.append(("", ", ".join(f"{n} {s}{'s' if n != 1 else ''}" for s, n in counts)))
    return lines


def render_findings(findings, file=None, *, target: str = "", notes=()) -> None:
    file = file or sys.stdout
    lines = layout(findings, target=target, notes=notes)
    if file.isatty() and not os.environ.get("NO_COLOR"):
        from rich.console import Console
        from rich.text import Text
        console = Console(file=file, highlight=False)
        for style, text in lines:
            console.print(Text(text, style=style or ""), soft_wrap=True)
    else:
        file.write("\n".join(text for _, text in lines) + "\n")
