"""``aiboxctl keys add|list|revoke|rotate``: the front door's API keys (run as root, or as the
owner of the installation: the key file is 0600)."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from aiboxctl.cli import output
from aiboxctl.cli.options import JsonOpt, RootOpt

keys_app = typer.Typer(help="API keys of the front door: add, list, revoke, rotate (docs/access.md).",
                       no_args_is_help=True)

NameArg = Annotated[str, typer.Argument(help="The key's name (a person, an application or a team).")]


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")


def _store(root):
    from aiboxctl.access.keys import KeyStore
    from aiboxctl.access.paths import AccessPaths
    from aiboxctl.deploy.spec import install_layout

    return KeyStore(AccessPaths.for_layout(install_layout(root)).keys)


def _show_secret(console: Any, issued: Any, verb: str) -> None:
    r = issued.record
    console.print(f"{verb} key '{r.name}'" + (f" ({r.department})" if r.department else ""))
    console.print(issued.secret, soft_wrap=True)
    output.note("this is the only time the key is shown: give it to its user now")


def _issued(issued: Any) -> dict:
    import time

    return {"key": issued.record.public(time.time()), "secret": issued.secret}


@keys_app.command("add")
def add(
    name: NameArg,
    models: Annotated[Optional[str], typer.Option("--models", help="Comma-separated models it may use (default all).")] = None,
    expires: Annotated[Optional[str], typer.Option("--expires", help="Lifetime, e.g. 90d, 12h, 2w (default never).")] = None,
    department: Annotated[Optional[str], typer.Option("--department", help="Department, for usage reports.")] = None,
    rpm: Annotated[Optional[int], typer.Option("--rpm", help="Requests per minute (default unlimited).")] = None,
    tokens_per_day: Annotated[Optional[int], typer.Option("--tokens-per-day", help="Prompt + completion tokens per day.")] = None,
    concurrency: Annotated[Optional[int], typer.Option("--concurrency", help="Requests at once.")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="May manage keys and read /metrics.")] = False,
    root: RootOpt = None,
    json_: JsonOpt = False,
) -> int:
    """Make a key; the secret is printed once and only its salted hash is kept."""
    import time

    from aiboxctl.access.durations import parse_duration
    from aiboxctl.access.keys import KeyLimits

    now = time.time()
    model_list = tuple(m.strip() for m in (models or "").split(",") if m.strip())
    limits = KeyLimits(models=model_list, department=department,
                       expires_at=now + parse_duration(expires, option="--expires") if expires else None,
                       rpm=rpm, tokens_per_day=tokens_per_day, concurrency=concurrency, admin=admin)
    issued = _store(root).add(name, limits, now=now)
    return output.emit(_issued(issued), lambda c, _: _show_secret(c, issued, "added"), essential=True)


@keys_app.command("list")
def list_(root: RootOpt = None, json_: JsonOpt = False) -> int:
    """Every key with its scope, limits and state (never a secret)."""
    import time

    now = time.time()
    keys = [r.public(now) for r in _store(root).load()]

    def human(console: Any, res: dict) -> None:
        from rich.table import Table

        if not res["keys"]:
            console.print("no keys (aiboxctl keys add NAME)")
            return
        table = Table(box=None, header_style="bold")
        for col in ("name", "state", "department", "models", "rpm", "tokens/day", "concurrency", "admin", "expires"):
            table.add_column(col)
        for k in res["keys"]:
            exp = time.strftime("%Y-%m-%d", time.localtime(k["expires_at"])) if k["expires_at"] else "-"
            table.add_row(k["name"], k["state"], k["department"] or "-", ",".join(k["models"]) or "all",
                          *(str(k[f]) if k[f] is not None else "-" for f in ("rpm", "tokens_per_day", "concurrency")),
                          "yes" if k["admin"] else "", exp)
        console.print(table)

    return output.emit({"keys": keys}, human)


@keys_app.command("revoke")
def revoke(name: NameArg, root: RootOpt = None, json_: JsonOpt = False) -> int:
    """Stop a key at the next request (no restart)."""
    import time

    rec = _store(root).revoke(name, now=time.time())
    return output.emit({"key": rec.public(time.time())}, lambda c, r: c.print(f"revoked key '{name}'"))


@keys_app.command("rotate")
def rotate(name: NameArg, root: RootOpt = None, json_: JsonOpt = False) -> int:
    """A new secret for a key, same name, scope and limits; the old secret stops at once."""
    import time

    issued = _store(root).rotate(name, now=time.time())
    return output.emit(_issued(issued), lambda c, _: _show_secret(c, issued, "rotated"), essential=True)
