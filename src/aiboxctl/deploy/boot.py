"""Coming back after a reboot. systemd starts the unit at boot (``enable``); the built-in
supervisor (a --root prefix, or a box without systemd as PID 1) is a plain process that nothing
starts again. ``install`` and ``status`` say so and offer the boot hook this box has: a crontab
``@reboot`` line when cron is installed, else a line for rc.local. Nothing is written to the
host's boot configuration: that stays the administrator's decision."""

from __future__ import annotations

import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BootHook:
    kind: str | None  # "cron" | "rc.local" | None (none found)
    line: str  # what to add (the command alone when no hook was found)
    where: str  # how to add it

    def note(self) -> str:
        head = "the built-in supervisor does not start again after a reboot (no systemd unit)"
        if self.kind is None:
            return f"{head}; no boot hook found on this box (no crontab, no rc.local): run `{self.line}` after each boot"
        return f"{head}: to start it at boot, add `{self.line}` to {self.where}"


def start_command(root_flag: str) -> str:
    exe = Path(sys.executable).with_name("aiboxctl")
    program = str(exe) if exe.is_file() else (shutil.which("aiboxctl") or "aiboxctl")
    return f"{shlex.quote(program)} start{root_flag}"


def boot_hook(root_flag: str, *, etc: Path = Path("/etc")) -> BootHook:
    """The boot hook this box offers for ``aiboxctl start``: cron's @reboot when crontab is on
    PATH, else rc.local (/etc/rc.local or /etc/rc.d/rc.local, present or creatable)."""
    command = start_command(root_flag)
    if shutil.which("crontab"):
        return BootHook("cron", f"@reboot {command}", "root's crontab (crontab -e)")
    for rc in (etc / "rc.local", etc / "rc.d" / "rc.local"):
        if rc.is_file() or (rc.parent != etc and rc.parent.is_dir()):
            return BootHook("rc.local", command, f"{rc} (before its 'exit 0'; the file must be executable)")
    return BootHook(None, command, "")
