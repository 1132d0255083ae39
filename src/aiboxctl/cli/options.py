"""Options shared by many commands, as Annotated aliases."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine output: one JSON envelope on stdout.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Assume yes; required when not on a TTY.")]
RootOpt = Annotated[
    Optional[Path],
    typer.Option("--root", help="Install prefix (default /). Tests and image builders use a temp dir."),
]
