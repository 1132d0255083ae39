"""The one seam for running external programs (vendor SMI tools, systemctl, pip, cmake).

Tests put fake executables on PATH instead of patching subprocess: the parsing code runs
for real against recorded outputs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from collections.abc import Mapping, Sequence


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int | None  # None: did not run (missing) or timed out
    stdout: str
    stderr: str
    timed_out: bool = False
    missing: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def failure_reason(self) -> str:
        name = os.path.basename(self.argv[0]) if self.argv else "?"
        if self.missing:
            return f"{name} not found on PATH"
        if self.timed_out:
            return f"{name} timed out"
        if self.returncode != 0:
            tail = (self.stderr or self.stdout).strip().splitlines()[-1:] or [""]
            return f"{name} exited {self.returncode}: {tail[0][:200]}".rstrip(": ")
        return ""


def which(name: str) -> str | None:
    return shutil.which(name)


def run_command(argv: Sequence[str], *, timeout: float = 10.0, env: Mapping[str, str] | None = None,
                cwd: str | None = None, input_text: str | None = None) -> CommandResult:
    """Run a program, never raising for missing tools, non-zero exits or timeouts."""
    argv = tuple(str(a) for a in argv)
    exe = shutil.which(argv[0], path=(env or os.environ).get("PATH")) if not os.path.isabs(argv[0]) else argv[0]
    if exe is None or not os.path.exists(exe):
        return CommandResult(argv, None, "", "", missing=True)
    try:
        proc = subprocess.run(
            (exe, *argv[1:]), capture_output=True, text=True, errors="replace", timeout=timeout,
            env=dict(env) if env is not None else None, cwd=cwd, input=input_text,
            stdin=None if input_text is not None else subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return CommandResult(argv, None, out, "", timed_out=True)
    except OSError as exc:  # not executable, exec format error
        return CommandResult(argv, None, "", str(exc), missing=True)
    return CommandResult(argv, proc.returncode, proc.stdout, proc.stderr)
