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
        return ErrorInfo(exc.code, exc.message, exc.hint, exc.exit_code)
    if isinstance(exc, KeyboardInterrupt):
        return ErrorInfo("interrupted", "Interrupted.", None, ExitCode.ERROR)
    if isinstance(exc, FileNotFoundError):
        return ErrorInfo("not_found", f"No such file: {exc.filename or exc}", None, ExitCode.ERROR)
    if isinstance(exc, PermissionError):
        return ErrorInfo(
            "permission_denied",
            f"Permission denied: {exc.filename or exc}",
            "run as root, or use --root PREFIX / AIBOX_HOME to work in a directory you own",
            ExitCode.ERROR,
        )
    if isinstance(exc, OSError) and exc.errno == 28:  # ENOSPC
        return ErrorInfo("disk_full", f"No space left on device: {exc.filename or ''}".strip(),
                         "free space or point AIBOX_HOME / --store at a larger disk", ExitCode.ERROR)
    return ErrorInfo(
        "internal",
        f"Internal error: {type(exc).__name__}: {exc}",
        "re-run with AIBOX_DEBUG=1 for a traceback and report it",
        ExitCode.ERROR,
    )
