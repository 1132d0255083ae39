"""Exit codes and the one error table.

Core code raises :class:`AiboxError` subclasses (never prints). The CLI edge turns them,
and the few foreign exceptions listed in :func:`from_exception`, into one line on stderr
(or the JSON envelope) and the documented exit code.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ExitCode(enum.IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2
    DOES_NOT_FIT = 3
    VERIFICATION_FAILED = 4
    SERVICE_DOWN = 5
    INTERRUPTED = 130  # Ctrl-C (SIGINT): the shell's 128 + 2


# The one table: which exit code a failure gets, by its stable code (JSON ``errors[].code``),
# whichever command meets it and whichever class raised it. README's exit-code table lists the
# same codes (a test keeps them together). A code not listed here exits with its class's code.
EXIT_CODES: dict[str, ExitCode] = {
    "error": ExitCode.ERROR,
    "internal": ExitCode.ERROR,
    "not_found": ExitCode.ERROR,
    "permission_denied": ExitCode.ERROR,
    "disk_full": ExitCode.ERROR,
    # Another program listens there: a fact of the box, not a malformed argument (install and serve alike).
    "port_in_use": ExitCode.ERROR,
    "usage": ExitCode.USAGE,
    "confirmation_required": ExitCode.USAGE,
    # A profile, hardware profile or catalog file that is not valid YAML or not valid data: bad input.
    "invalid_data_file": ExitCode.USAGE,
    # --engine-wheel of another architecture or backend than the bundle's box: a wrong argument.
    "engine_wheel_mismatch": ExitCode.USAGE,
    "does_not_fit": ExitCode.DOES_NOT_FIT,
    "verification_failed": ExitCode.VERIFICATION_FAILED,
    "checksum_mismatch": ExitCode.VERIFICATION_FAILED,
    "service_down": ExitCode.SERVICE_DOWN,
    "interrupted": ExitCode.INTERRUPTED,
}


def exit_code_for(code: str, default: ExitCode = ExitCode.ERROR) -> ExitCode:
    return EXIT_CODES.get(code, default)


class AiboxError(Exception):
    """Base of every error aiboxctl reports to a user.

    ``code`` is a stable machine-readable slug (JSON ``errors[].code``), ``hint`` names the
    next command to try.
    """

    exit_code: ExitCode = ExitCode.ERROR
    code: str = "error"

    def __init__(self, message: str, *, hint: str | None = None, code: str | None = None,
                 data: dict | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if code is not None:
            self.code = code
        # The table decides over the class (a port in use is 1 whether serve or install finds it).
        self.exit_code = exit_code_for(self.code, type(self).exit_code)
        # Partial results that still belong in the JSON envelope (e.g. the closest plan).
        self.data = data or {}


class UsageError(AiboxError):
    exit_code = ExitCode.USAGE
    code = "usage"


class DoesNotFit(AiboxError):
    exit_code = ExitCode.DOES_NOT_FIT
    code = "does_not_fit"


class VerificationFailed(AiboxError):
    exit_code = ExitCode.VERIFICATION_FAILED
    code = "verification_failed"


class ServiceDown(AiboxError):
    exit_code = ExitCode.SERVICE_DOWN
    code = "service_down"


class ConfirmationRequired(UsageError):
    code = "confirmation_required"


@dataclass(frozen=True)
class ErrorInfo:
    code: str
    message: str
    hint: str | None
    exit_code: ExitCode


def from_exception(exc: BaseException) -> ErrorInfo:
    """Map any exception to what the user sees. The single place that decides wording."""
    if isinstance(exc, AiboxError):
        return ErrorInfo(exc.code, exc.message, exc.hint, exc.exit_code)  # the table's, set by __init__
    if isinstance(exc, KeyboardInterrupt):
        return ErrorInfo("interrupted", "Interrupted (Ctrl-C); whatever was under way was stopped.", None,
                         EXIT_CODES["interrupted"])
    if isinstance(exc, FileNotFoundError):
        return ErrorInfo("not_found", f"No such file: {exc.filename or exc}", None, EXIT_CODES["not_found"])
    if isinstance(exc, PermissionError):
        return ErrorInfo(
            "permission_denied",
            f"Permission denied: {exc.filename or exc}",
            "run as root, or use --root PREFIX / AIBOX_HOME to work in a directory you own",
            EXIT_CODES["permission_denied"],
        )
    if isinstance(exc, OSError) and exc.errno == 28:  # ENOSPC
        return ErrorInfo("disk_full", f"No space left on device: {exc.filename or ''}".strip(),
                         "free space or point AIBOX_HOME / --store at a larger disk", EXIT_CODES["disk_full"])
    return ErrorInfo(
        "internal",
        f"Internal error: {type(exc).__name__}: {exc}",
        "re-run with AIBOX_DEBUG=1 for a traceback and report it",
        EXIT_CODES["internal"],
    )
