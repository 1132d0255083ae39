"""``aiboxctl models list | verify [NAME] | rm NAME``: the model store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from aiboxctl.cli import output
from aiboxctl.cli.options import JsonOpt, RootOpt

models_app = typer.Typer(help="The model store: list, verify (re-hash) and remove pulled models.",
                         no_args_is_help=True)

StoreOpt = Annotated[Optional[Path], typer.Option(
    "--store", help="Model store folder (default $AIBOX_MODELS, else $AIBOX_HOME/models).")]
QuantOpt = Annotated[Optional[str], typer.Option("--quant", help="Only this quantization of a variant.")]


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")


def _store(store: Path | None):
    from aiboxctl.hub.store import ModelStore
    from aiboxctl.paths import StatePaths

    return ModelStore(store or StatePaths.from_env().models)


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


@models_app.command("list")
def list_(store: StoreOpt = None, json_: JsonOpt = False) -> int:
    """Every file in the store with its source, revision, size and sha256."""
    st = _store(store)
    records = st.records()
    result = {"store": st.root, "files": [r.to_dict() | {"present": r.path.is_file()} for r in records],
              "total_bytes": sum(r.size for r in records)}

    def human(console: Any, res: dict) -> None:
        from rich.table import Table

        if not res["files"]:
            console.print(f"no models in {res['store']} (aiboxctl pull MODEL)")
            return
        table = Table(box=None, header_style="bold")
        for col in ("name", "variant", "quant", "source", "size", "sha256"):
            table.add_column(col)
        for f in res["files"]:
            table.add_row(f["name"] + ("" if f["present"] else " (missing)"), f["variant"] or "-",
                          f["quant"] or "-", f["source"], _size(f["size"]), f["sha256"][:16] + "…")
        console.print(table)
        console.print(f"{len(res['files'])} file(s), {_size(res['total_bytes'])} in {res['store']}")

    return output.emit(result, human)


@models_app.command("verify")
def verify(name: Annotated[Optional[str], typer.Argument(help="Variant, repo:file or file name; default all.")] = None,
           quant: QuantOpt = None, store: StoreOpt = None, root: RootOpt = None, json_: JsonOpt = False) -> int:
    """Re-hash stored files against their recorded sha256. A mismatch is quarantined (never
    served; the installation that served it, default or --root, is stopped) and exits 4."""
    from aiboxctl.errors import ExitCode, VerificationFailed

    report = _store(store).verify(name, quant=quant)
    quarantined = [e.path for e in report.entries if e.quarantined_to]
    stopped = None
    if quarantined:
        from aiboxctl.deploy.modelcheck import stop_service_serving

        stopped = stop_service_serving(quarantined, root)
    result = {"ok": report.ok, "files": report.entries, "service_stopped": stopped}

    def human(console: Any, res: dict) -> None:
        for e in res["files"]:
            state = "ok" if e.ok else ("missing" if e.actual is None else f"MISMATCH (got {e.actual})")
            console.print(f"{e.name}: {state}" + (f"; quarantined to {e.quarantined_to}" if e.quarantined_to else ""))
        if not res["files"]:
            console.print("no models in the store")

    if not report.ok:
        bad = next(e for e in report.entries if not e.ok)
        if bad.actual is None:
            message = f"{bad.name}: file missing ({bad.path})"
        else:
            message = (f"{bad.name}: sha256 mismatch: expected {bad.expected}, got {bad.actual}; "
                       f"quarantined to {bad.quarantined_to}")
        hint = f"aiboxctl pull {bad.name}"
        if stopped:
            flag = "" if root is None else f" --root {stopped}"
            message += f"; the service under {stopped} served it and is stopped"
            hint = f"aiboxctl install --profile PROFILE{flag} --yes (pulls it again, restarts the service)"
        raise VerificationFailed(message, hint=hint, data=output.to_jsonable(result))
    return output.emit(result, human, exit_code=ExitCode.OK)


@models_app.command("rm")
def rm(name: Annotated[str, typer.Argument(help="Variant, repo:file or file name.")],
       quant: QuantOpt = None, store: StoreOpt = None, json_: JsonOpt = False) -> int:
    """Remove a model's files and records from the store."""
    removed = _store(store).remove(name, quant)
    result = {"removed": [r.to_dict() for r in removed], "freed_bytes": sum(r.size for r in removed)}

    def human(console: Any, res: dict) -> None:
        for r in res["removed"]:
            console.print(f"removed {r['name']} ({_size(r['size'])})")

    return output.emit(result, human)
