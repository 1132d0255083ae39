"""``aiboxctl paths``: where state, models, caches and an installation live."""

from __future__ import annotations

from typing import Any

import typer

from aiboxctl.cli import output
from aiboxctl.cli.options import JsonOpt, RootOpt


def register(app: typer.Typer) -> None:
    app.command("paths")(paths)


def paths(root: RootOpt = None, json_: JsonOpt = False) -> int:
    """Print the state root (AIBOX_HOME), model store, caches and the install layout."""
    from aiboxctl.paths import InstallLayout, StatePaths

    state = StatePaths.from_env()
    layout = InstallLayout.for_root(root)
    result = {
        "state": state,
        "install": {**output.to_jsonable(layout), "engine_config": str(layout.engine_config),
                    "manifest": str(layout.manifest)},
    }

    def human(console: Any, r: dict) -> None:
        from rich.table import Table

        table = Table(show_header=False, box=None)
        for group, values in output.to_jsonable(r).items():
            for key, value in values.items():
                table.add_row(f"{group}.{key}", str(value))
        console.print(table)

    return output.emit(result, human)
