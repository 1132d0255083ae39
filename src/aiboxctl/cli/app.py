"""The root of the CLI: global options, mounting of command modules, and ``main``.

Each module in ``COMMAND_MODULES`` defines ``register(app)``; those modules import only
typer at top level, so ``aiboxctl --help`` stays fast (heavy imports live in the commands).
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from typing import Annotated, Optional

import typer

from aiboxctl import __version__
from aiboxctl.cli import output
from aiboxctl.env import Env
from aiboxctl.errors import ErrorInfo, ExitCode, from_exception

COMMAND_MODULES: tuple[str, ...] = (  # the pipeline order, as `aiboxctl --help` lists them
    "probe",
    "plan",
    "inspect",
    "estimate",
    "pull",
    "models",
    "install",
    "service",
    "chat",
    "bench",
    "serve",
    "gateway",
    "keys",
    "usage",
    "audit",
    "tls",
    "engine",
    "pack",
    "paths",
)

app = typer.Typer(
    name="aiboxctl",
    help="Turn a bare AI box into a private, secure, fast LLM service.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Plain Click help: Typer's Rich help imports rich.markdown/markdown-it (~90 ms), which
    # alone breaks the start-up goal (bench/cli_startup.py).
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        if output.STATE.json:
            output.emit({"version": __version__})
        else:
            typer.echo(f"aiboxctl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    json_: Annotated[bool, typer.Option("--json", help="Machine output: one JSON envelope on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only results and errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More detail on stderr.")] = False,
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = None,
) -> None:
    output.STATE.json |= json_
    output.STATE.quiet |= quiet
    output.STATE.verbose |= verbose
    if ctx.invoked_subcommand:
        output.set_command(ctx.invoked_subcommand)


def _mount() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(f"aiboxctl.cli.{name}").register(app)


_mount()


def _click_error(exc: Exception) -> ErrorInfo:
    import click

    message = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
    first = message.splitlines()[0] if message else "Invalid usage."
    # Typer and Click both append "Did you mean ...?" to an unknown command: say it once.
    first = re.sub(r"( Did you mean [^?]*\?)(?:\1)+", r"\1", first)
    command = output.STATE.command
    known = command in {c.name for c in app.registered_commands} | {g.name for g in app.registered_groups}
    hint = f"aiboxctl {command} --help" if command and known else "aiboxctl --help"
    return ErrorInfo("usage", first, hint, ExitCode.USAGE)


def _typer(**extra) -> typer.Typer:
    return typer.Typer(name=app.info.name, help=app.info.help, no_args_is_help=True, pretty_exceptions_enable=False,
                       rich_markup_mode=None, context_settings={"help_option_names": ["-h", "--help"]}, **extra)


def _app_for() -> typer.Typer:
    """Only what this call needs: Typer builds the Click objects (signatures, annotations) of
    every mounted command on each call, tens of ms for ~25 commands. A named command gets an
    app with just that command; the root help (no command named) gets a listing whose entries
    carry each command's help but no parameters. Completion and unknown names get the whole app."""
    from typer.models import CommandInfo

    name = output.STATE.command
    if os.environ.get("_AIBOXCTL_COMPLETE"):
        return app
    if name:
        cmds = [c for c in app.registered_commands if c.name == name]
        groups = [g for g in app.registered_groups if g.name == name]
        if len(cmds) + len(groups) != 1:
            return app
        slim = _typer()
        slim.registered_callback = app.registered_callback
        slim.registered_commands, slim.registered_groups = cmds, groups
        return slim
    listing = _typer()
    listing.registered_callback = app.registered_callback
    listing.registered_commands = [
        CommandInfo(name=c.name, help=c.help or inspect.getdoc(c.callback), short_help=c.short_help,
                    hidden=c.hidden, callback=_listed_only) for c in app.registered_commands
    ] + [CommandInfo(name=g.name, help=g.help or g.typer_instance.info.help, hidden=bool(g.hidden),
                     callback=_listed_only) for g in app.registered_groups]
    return listing


def _listed_only() -> None:  # never runs: a named command always gets the real app
    raise RuntimeError("listing stand-in invoked")


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point. Returns (and exits with) a documented exit code."""
    import click

    args = list(sys.argv[1:] if argv is None else argv)
    output.configure_from_argv(args)
    try:
        rv = _app_for()(args=args, prog_name="aiboxctl", standalone_mode=False)
        code = int(rv) if isinstance(rv, int) else 0
        if code == ExitCode.INTERRUPTED:
            # Typer turns Ctrl-C into a silent Exit(130), which Click returns as the value in
            # non-standalone mode (no command returns 130 itself): say it, in the one wording.
            code = output.emit_error(from_exception(KeyboardInterrupt()))
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.exceptions.Abort:
        code = output.emit_error(from_exception(KeyboardInterrupt()))
    except click.ClickException as exc:
        code = output.emit_error(_click_error(exc))
    except BaseException as exc:  # noqa: BLE001 - the one place that turns errors into exit codes
        if isinstance(exc, SystemExit):
            raise
        if os.environ.get(Env.DEBUG) == "1":
            import traceback  # only here: it drags in linecache/tokenize at start-up

            traceback.print_exc()
        code = output.emit_error(from_exception(exc), getattr(exc, "data", None) or None)
    if argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":  # pragma: no cover
    main()
