"""``aiboxctl audit verify [FILE]``: read the hash chain and name the first record that was
changed, removed, inserted or cut off; exit 4 when it is broken."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from aiboxctl.cli import output
from aiboxctl.cli.options import JsonOpt, RootOpt

audit_app = typer.Typer(help="The front door's tamper-evident audit log (docs/access.md).", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def verify(
    file: Annotated[Optional[Path], typer.Argument(help="One log file (default: the whole chain of the installation).")] = None,
    secret: Annotated[Optional[Path], typer.Option("--secret", help="The box secret (default the installation's).")] = None,
    root: RootOpt = None,
    json_: JsonOpt = False,
) -> int:
    """Check every record's hash and link, the checkpoint signatures and the signed head."""
    from aiboxctl.access.audit import box_secret, verify_log
    from aiboxctl.access.paths import AccessPaths
    from aiboxctl.deploy.spec import install_layout
    from aiboxctl.errors import VerificationFailed

    paths = AccessPaths.for_layout(install_layout(root))
    try:
        key = box_secret(secret or paths.secret, create=False)
    except PermissionError:
        key = None
    if key is None:
        output.warn(f"box secret {secret or paths.secret} not readable: checkpoint signatures are not checked")
    result = verify_log(file or paths.audit, key, single=file is not None)
    if not result.ok:
        p = result.problem
        raise VerificationFailed(p.message, hint="keep this copy as evidence; compare with the SIEM's copy",
                                 data=output.to_jsonable(result))

    def human(console: Any, r: Any) -> None:
        console.print(f"audit chain intact: {r.records} records (last seq {r.last_seq}), {r.checkpoints} signed "
                      f"checkpoint(s), {len(r.files)} file(s)")
        for n in r.notes:
            console.print(f"note: {n}")

    return output.emit(result, human)
