"""A prefix of its own for a test that installs for real: ``root`` (``--root``), a state root
``home`` (AIBOX_HOME), a free ``port``, and the real console script run there as a child process
(no stdin unless given, no failure injection inherited from the test's environment)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from test_engine_support import free_port

EXE = str(Path(sys.executable).with_name("aiboxctl"))


class InstallPrefix:
    def __init__(self, root: Path, home: Path) -> None:
        self.root, self.home = root, home
        self.port = free_port()
        self.env = {**os.environ, "AIBOX_HOME": str(home), "NO_COLOR": "1", "COLUMNS": "200"}
        for name in ("AIBOX_INJECT_FAILURE", "AIBOX_TEST_KILL_AT"):
            self.env.pop(name, None)

    def run(self, *args: str, timeout: float = 300, extra_env: dict | None = None,
            input_text: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=timeout,
                              env={**self.env, **(extra_env or {})}, input=input_text,
                              stdin=None if input_text is not None else subprocess.DEVNULL)

    def json(self, *args: str, **kw) -> tuple[int, dict]:
        """(exit code, the --json envelope); output that is not JSON fails the test with both streams."""
        proc = self.run(*args, "--json", **kw)
        try:
            return proc.returncode, json.loads(proc.stdout)
        except ValueError:
            raise AssertionError(f"not JSON (exit {proc.returncode}): {proc.stdout[-500:]} {proc.stderr[-2000:]}")
