"""The one output sink: human (Rich) or the versioned JSON envelope.

Results go to stdout; progress, warnings and hints go to stderr, so ``--json`` stdout is
always exactly one JSON document, on success and on failure.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiboxctl.errors import ConfirmationRequired, ErrorInfo, ExitCode
from aiboxctl.jsonable import to_jsonable

if TYPE_CHECKING:
    from rich.console import Console

ENVELOPE_VERSION = 1
ENVELOPE_KEYS = ("version", "command", "ok", "exit_code", "data", "errors")


@dataclass
class OutputState:
    json: bool = False
    quiet: bool = False
    verbose: bool = False
    command: str = ""
    warnings: list[str] = field(default_factory=list)


STATE = OutputState()


def reset() -> None:
    global STATE
    STATE = OutputState()


def configure_from_argv(argv: list[str]) -> None:
    """Decide the output mode before Click parses, so that even a usage error can be
    reported as a JSON envelope. Options after ``--`` are arguments, not flags."""
    head = argv[: argv.index("--")] if "--" in argv else argv
    STATE.json = STATE.json or "--json" in head
    STATE.quiet = STATE.quiet or "--quiet" in head or "-q" in head
    STATE.verbose = STATE.verbose or "--verbose" in head or "-v" in head
    positional = [a for a in head if not a.startswith("-")]
    if positional and not STATE.command:
        STATE.command = positional[0]


def set_command(name: str) -> None:
    STATE.command = name


def envelope(*, ok: bool, exit_code: int, data: Any = None, errors: list[dict] | None = None,
             command: str | None = None) -> dict:
    return {
        "version": ENVELOPE_VERSION,
        "command": command if command is not None else STATE.command,
        "ok": ok,
        "exit_code": int(exit_code),
        "data": to_jsonable(data) if data is not None else {},
        "errors": errors or [],
    }


def _console(**kwargs: Any) -> "Console":
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            # Rich's default points *stdout* at /dev/null and raises SystemExit(1), which would
            # end a command mid-transaction; silence this console's own stream and let the
            # caller decide (the sink below carries on without the output).
            self.quiet = True
            _point_at_devnull(self.file)
            raise BrokenPipeError(32, "Broken pipe")

    # No ":name:" emoji codes: data such as a certificate fingerprint ("…:82:AB:FD…") must print
    # as it is, never as 🆎.
    return _Console(**{"emoji": False, **kwargs})


# A pipe or a log file has no width: a line is as long as what it says (one event per line).
_UNWRAPPED_WIDTH = 10_000


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _width_args(stream: Any) -> dict[str, Any]:
    """Wrap to the terminal on a terminal; never when the stream is a pipe or a file (a stale
    COLUMNS included): Rich would otherwise cut lines at 80 columns (``n_ctx \\n8192``)."""
    if _is_terminal(stream):
        return {}
    return {"width": _UNWRAPPED_WIDTH, "soft_wrap": True}


def stdout_console() -> "Console":
    return _console(highlight=False, **{"soft_wrap": False, **_width_args(sys.stdout)})


def stderr_console() -> "Console":
    return _console(stderr=True, highlight=False, **_width_args(sys.stderr))


@contextmanager
def _survive_closed(stream: str) -> Iterator[None]:
    """A reader that went away (``aiboxctl install … 2>&1 | head -3``) loses the rest of the
    output, never the work: the stream's descriptor is pointed at /dev/null so that later
    writes, and the interpreter's last flush, succeed silently."""
    try:
        yield
    except BrokenPipeError:
        _point_at_devnull(getattr(sys, stream))


def _point_at_devnull(fh: Any) -> None:
    """Later writes to ``fh`` (and the interpreter's last flush) go nowhere, silently."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fh.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _write_json(doc: dict) -> None:
    with _survive_closed("stdout"):
        sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False, sort_keys=False) + "\n")
        sys.stdout.flush()


def emit(result: Any, human: Callable[["Console", Any], None] | None = None, *,
         exit_code: int = ExitCode.OK, essential: bool = False) -> int:
    """Render a command's result. ``human`` draws it with Rich; ``essential`` output (the
    answer of ``chat -p``) is printed even with ``--quiet``."""
    if STATE.json:
        data = to_jsonable(result)
        if STATE.warnings and isinstance(data, dict):
            data.setdefault("warnings", [])
            data["warnings"] = list(dict.fromkeys([*data["warnings"], *STATE.warnings]))
        _write_json(envelope(ok=exit_code == 0, exit_code=exit_code, data=data))
    elif human is not None and (essential or not STATE.quiet):
        with _survive_closed("stdout"):
            human(stdout_console(), result)
    return int(exit_code)


def emit_error(info: ErrorInfo, data: Any = None) -> int:
    err = {"code": info.code, "message": info.message, "hint": info.hint}
    if STATE.json:
        _write_json(envelope(ok=False, exit_code=info.exit_code, data=data, errors=[err]))
    else:
        line = f"error: {info.message}"
        if info.hint:
            line += f" (try: {info.hint})"
        with _survive_closed("stderr"):
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
    return int(info.exit_code)


def note(message: str) -> None:
    """A progress or status line for people: stderr, never in --json or --quiet mode."""
    if not STATE.json and not STATE.quiet:
        with _survive_closed("stderr"):
            stderr_console().print(message, markup=False)


def warn(message: str) -> None:
    STATE.warnings.append(message)
    if not STATE.json:
        with _survive_closed("stderr"):
            sys.stderr.write(f"warning: {message}\n")


def debug(message: str) -> None:
    if STATE.verbose and not STATE.json:
        with _survive_closed("stderr"):
            sys.stderr.write(f"debug: {message}\n")


def is_interactive() -> bool:
    return sys.stdin.isatty() and not STATE.json and os.environ.get("CI") is None


def confirm(question: str, *, yes: bool) -> None:
    """Ask when a person is there; otherwise refuse with "use --yes", never block."""
    if yes:
        return
    if not is_interactive():
        raise ConfirmationRequired(f"{question} Refusing without confirmation.", hint="re-run with --yes")
    import typer

    if not typer.confirm(question, default=False):
        raise ConfirmationRequired("Cancelled.", hint="re-run with --yes to proceed")
