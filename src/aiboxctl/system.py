"""The one seam for running external programs (vendor SMI tools, systemctl, pip, cmake).

Tests put fake executables on PATH instead of patching subprocess: the parsing code runs
for real against recorded outputs.
"""

from __future__ import annotations

import os
import shutil
import signal
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
        # A session of its own, so a timeout kills the whole process group: a vendor tool that
        # is a shell wrapper leaves children holding our pipes open otherwise, and reading
        # them would hang past the timeout.
        proc = subprocess.Popen(
            (exe, *argv[1:]), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace",
            env=dict(env) if env is not None else None, cwd=cwd, start_new_session=True,
            stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
        )
    except OSError as exc:  # not executable, exec format error
        return CommandResult(argv, None, "", str(exc), missing=True)
    try:
        stdout, stderr = proc.communicate(input=input_text, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        try:
            stdout, _ = proc.communicate(timeout=2)
        except subprocess.TimeoutExpired:
            stdout = ""
        return CommandResult(argv, None, stdout or "", "", timed_out=True)
    except BaseException:
        _kill_group(proc)
        raise
    return CommandResult(argv, proc.returncode, stdout, stderr)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
