"""After a reboot the built-in supervisor is gone: install and status offer the boot hook the
box has (cron's @reboot, else rc.local), or say there is none. A fake crontab on PATH, as the
conventions fake every system tool; rc.local in a temporary /etc."""

from __future__ import annotations

import os
from pathlib import Path

from aiboxctl.deploy.boot import boot_hook


def _path_with(tmp: Path, *tools: str) -> str:
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in tools:
        exe = bin_dir / tool
        exe.write_text("#!/bin/sh\nexit 0\n")
        exe.chmod(0o755)
    return str(bin_dir)


def test_cron_is_offered_when_crontab_exists(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", _path_with(tmp_path, "crontab"))
    hook = boot_hook(" --root /srv/box", etc=tmp_path / "etc")
    assert hook.kind == "cron" and hook.line.startswith("@reboot ") and hook.line.endswith(" start --root /srv/box")
    assert "crontab -e" in hook.note() and "after a reboot" in hook.note()


def test_rc_local_without_cron(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", _path_with(tmp_path))
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "rc.local").write_text("#!/bin/sh\nexit 0\n")
    hook = boot_hook("", etc=etc)
    assert hook.kind == "rc.local" and hook.line.endswith(" start") and str(etc / "rc.local") in hook.note()


def test_no_hook_says_so_and_gives_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", _path_with(tmp_path))
    hook = boot_hook(" --root /x", etc=tmp_path / "etc")
    assert hook.kind is None and "no boot hook found" in hook.note() and "start --root /x" in hook.note()
    assert os.path.basename(hook.line.split()[0]) == "aiboxctl"
