"""Issue 19: piped output and the log file are never hard-wrapped (`n_ctx \\n8192`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

EXE = str(Path(sys.executable).with_name("aiboxctl"))


def _run(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}  # the terminal width a pipe has none of
    env["AIBOX_HOME"] = str(home)
    return subprocess.run([EXE, *args], capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL,
                          timeout=120)


def test_piped_table_cell_is_not_wrapped(tmp_path):
    home = tmp_path / ("a-state-root-deep-enough-to-pass-eighty-columns" * 3)
    home.mkdir(parents=True)
    r = _run("paths", home=home)
    assert r.returncode == 0, r.stderr
    assert any(str(home) in line for line in r.stdout.splitlines()), r.stdout


def test_piped_progress_line_is_one_line(tmp_path, capsys):
    # stderr is what the supervisor's log file gets from `aiboxctl serve`: one event per line.
    from aiboxctl.cli import output

    message = ("aiboxctl serve: a-model-with-a-long-served-name-for-the-test on http://127.0.0.1:8080 "
               "(4 slots, n_ctx 8192) " + "and more detail " * 10)
    output.note(message)
    err = capsys.readouterr().err
    assert err == message + "\n"


def test_piped_stdout_ignores_a_stale_columns(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "40")
    from aiboxctl.cli import output

    console = output.stdout_console()
    console.print("n_ctx " * 20 + "8192")
    assert capsys.readouterr().out.count("\n") == 1
