"""``aiboxctl usage``: requests and tokens per key, department or model from the usage ledger."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from aiboxctl.cli import output
from aiboxctl.cli.options import JsonOpt, RootOpt


def register(app: typer.Typer) -> None:
    app.command("usage")(usage)


def usage(
    since: Annotated[str, typer.Option("--since", help="How far back, e.g. 7d, 24h, 30d.")] = "30d",
    by: Annotated[str, typer.Option("--by", help="Group by key, department or model.")] = "key",
    csv_: Annotated[bool, typer.Option("--csv", help="CSV on stdout (for a spreadsheet).")] = False,
    root: RootOpt = None,
    json_: JsonOpt = False,
) -> int:
    """Requests, errors and prompt/completion tokens per key, department or model (never content)."""
    import time

    from aiboxctl.access.durations import parse_duration
    from aiboxctl.access.ledger import usage_report
    from aiboxctl.access.paths import AccessPaths
    from aiboxctl.deploy.spec import install_layout

    seconds = parse_duration(since, option="--since")
    path = AccessPaths.for_layout(install_layout(root)).ledger
    report = usage_report(path, since=time.time() - seconds, by=by)
    cols = ("group", "requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens")
    if csv_ and not output.STATE.json:
        import csv
        import sys

        writer = csv.writer(sys.stdout)
        writer.writerow([by, *cols[1:]])
        for r in report.rows:
            writer.writerow([getattr(r, c) if getattr(r, c) is not None else "" for c in cols])
        return 0

    def human(console: Any, rep: Any) -> None:
        from rich.table import Table

        if not rep.rows:
            console.print(f"no requests in the last {since}")
            return
        table = Table(box=None, header_style="bold")
        for c in (by, "requests", "errors", "prompt", "completion", "total"):
            table.add_column(c, justify="left" if c == by else "right")
        for r in rep.rows:
            table.add_row(r.group or "-", *(f"{getattr(r, c):,}" for c in cols[1:]))
        console.print(table)

    return output.emit(report, human)
