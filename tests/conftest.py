"""Shared fixtures. Every test gets its own AIBOX_HOME; nothing touches the real machine's state."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("aibox-home")
    monkeypatch.setenv("AIBOX_HOME", str(home))
    monkeypatch.delenv("AIBOX_MODELS", raising=False)
    monkeypatch.delenv("AIBOX_DEBUG", raising=False)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "120")
    from aiboxctl.cli import output

    output.reset()
    saved_env = dict(os.environ)
    yield home
    output.reset()
    # Commands run in-process may set process-wide variables (install --bundle goes offline
    # with HF_HUB_OFFLINE=1): a real CLI process ends there, a test session must not inherit it.
    os.environ.clear()
    os.environ.update(saved_env)


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json(self) -> dict:
        return json.loads(self.stdout)


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process (fast); output mode is reset for each call."""

    def run(*args: str) -> CliResult:
        from aiboxctl.cli import output
        from aiboxctl.cli.app import main

        output.reset()
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        output.reset()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture
def cli_proc():
    """Run the real console script in a child process (for exit codes, imports, signals)."""

    def run(*args: str, env: dict | None = None, timeout: float = 120, input_text: str | None = None) -> CliResult:
        exe = Path(sys.executable).with_name("aiboxctl")
        full_env = {**os.environ, **(env or {})}
        # A program started from a terminal gets Ctrl-C; pytest launched in the background of a
        # non-interactive shell (`nohup … &`) has SIGINT ignored, and a child inherits SIG_IGN
        # across exec (a handler is reset to the default instead): the child starts as from a terminal.
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            proc = subprocess.run([str(exe), *args], capture_output=True, text=True, env=full_env,
                                  timeout=timeout, input=input_text,
                                  stdin=None if input_text is not None else subprocess.DEVNULL)
        finally:
            signal.signal(signal.SIGINT, previous)
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    return run


@pytest.fixture
def install_prefix(tmp_path):
    """A fresh prefix for a real install (installprefix.InstallPrefix: tmp_path/root, AIBOX_HOME
    tmp_path/home, a free port); whatever the test installed there is uninstalled afterwards,
    pass or fail."""
    from installprefix import InstallPrefix

    prefix = InstallPrefix(tmp_path / "root", tmp_path / "home")
    yield prefix
    if prefix.root.exists():
        prefix.run("uninstall", "--root", str(prefix.root), "--yes")
