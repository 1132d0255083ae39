"""Options shared by many commands, as Annotated aliases."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine output: one JSON envelope on stdout.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Assume yes; required when not on a TTY.")]
RootOpt = Annotated[
    Optional[Path],
    typer.Option("--root", help="Install prefix (default /). Tests and image builders use a temp dir."),
]


def port_option(*decls: str, help: str) -> Any:
    """A ``--port`` option that only takes a TCP port (1..65535): a bad value is a usage error
    (exit 2) at the edge, also with ``--dry-run``, instead of a failure deep in a socket call.
    A factory rather than an alias because the commands' short flags and help differ."""
    return typer.Option(*decls, min=1, max=65535, help=help)
