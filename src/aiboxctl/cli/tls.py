"""``aiboxctl tls init|renew|show``: the front door's certificate — a local CA and a server
certificate for the box's names and addresses, or the organisation's pair."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from aiboxctl.cli import output
from aiboxctl.cli.options import JsonOpt, RootOpt

tls_app = typer.Typer(help="HTTPS for the front door: local CA, server certificate, renewal (docs/access.md).",
                      no_args_is_help=True)

NamesOpt = Annotated[Optional[list[str]], typer.Option(
    "--name", help="A host name or address the certificate covers (repeat; default: this box's names and addresses).")]


def register(app: typer.Typer) -> None:
    app.add_typer(tls_app, name="tls")


def _files(root):
    from aiboxctl.access.paths import AccessPaths
    from aiboxctl.access.tls import TlsFiles
    from aiboxctl.deploy.spec import install_layout

    return TlsFiles(AccessPaths.for_layout(install_layout(root)).tls_dir)


def _human(verb: str):
    def draw(console: Any, info: Any) -> None:
        import time

        console.print(f"{verb} {info.path} for {', '.join(info.names)}; valid until "
                      f"{time.strftime('%Y-%m-%d', time.localtime(info.not_after))}")
        if info.ca_fingerprint_sha256:
            console.print(f"CA file for clients: {info.ca_file}")
            console.print(f"CA fingerprint (SHA-256): {info.ca_fingerprint_sha256}")
    return draw


@tls_app.command("init")
def init(
    names: NamesOpt = None,
    tls_cert: Annotated[Optional[Path], typer.Option("--tls-cert", help="The organisation's certificate (PEM, chain after).")] = None,
    tls_key: Annotated[Optional[Path], typer.Option("--tls-key", help="Its private key (PEM, unencrypted).")] = None,
    root: RootOpt = None,
    json_: JsonOpt = False,
) -> int:
    """Create the local CA (kept if present) and a server certificate, or install the
    organisation's certificate and key after checking that they match and are valid now."""
    from aiboxctl.access import tls
    from aiboxctl.errors import UsageError

    files = _files(root)
    if (tls_cert is None) != (tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together", hint="aiboxctl tls init --tls-cert C --tls-key K")
    if tls_cert is not None:
        return output.emit(tls.install_pair(files, tls_cert, tls_key), _human("installed"))
    return output.emit(tls.init_local(files, names or tls.box_names()), _human("issued"))


@tls_app.command("renew")
def renew(names: NamesOpt = None, root: RootOpt = None, json_: JsonOpt = False) -> int:
    """Reissue the server certificate from the same local CA (clients keep trusting it)."""
    from aiboxctl.access import tls

    info = tls.renew(_files(root), names or None)
    restarted = _restart_front_door(root)
    draw = _human("renewed")

    def human(console: Any, r: Any) -> None:
        draw(console, r)
        console.print(f"front door: {restarted}")

    return output.emit(info, human)


def _restart_front_door(root) -> str:
    """uvicorn reads the certificate when it starts: a running front door of this installation is
    restarted (engines untouched) so it serves the renewed one."""
    from aiboxctl.deploy import manifest as mf
    from aiboxctl.deploy.instances import GATEWAY_NAME, is_multi
    from aiboxctl.deploy.spec import install_layout

    layout = install_layout(root)
    if mf.load_manifest(layout) is None or not is_multi(layout):
        return "no installed front door here: serve the files with `aiboxctl gateway` (tls_dir)"
    from aiboxctl.deploy.lifecycle import restart, status

    if not status(root).service.get("active"):
        return "not running: it serves the renewed certificate when started"
    restart(root, instance=GATEWAY_NAME)
    return "restarted (engines untouched): it serves the renewed certificate"


@tls_app.command("show")
def show(root: RootOpt = None, json_: JsonOpt = False) -> int:
    """The server certificate's names and validity, and the CA's fingerprint."""
    from aiboxctl.access import tls

    import time

    files = _files(root)
    info = tls.describe(files.cert, files.ca_cert)
    days = (info.not_after - time.time()) / 86400
    if days < tls.RENEW_BEFORE_DAYS:  # the front door keeps serving it; only clients would notice
        end = time.strftime("%Y-%m-%d", time.localtime(info.not_after))
        output.warn(f"the server certificate {'expired' if days <= 0 else 'expires'} on {end}"
                    + (f" (in {days:.0f} days)" if days > 0 else "") + ": aiboxctl tls renew")
    return output.emit(info, _human("certificate"))
