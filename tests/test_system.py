"""The subprocess seam: missing tools, failures and hangs never raise or block."""

from __future__ import annotations

import os
import time

from aiboxctl.system import run_command


def _tool(tmp_path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def test_missing_tool():
    r = run_command(["aibox-no-such-tool-xyz"])
    assert r.missing and not r.ok and "not found" in r.failure_reason()


def test_nonzero_exit_reason_names_last_stderr_line(tmp_path):
    tool = _tool(tmp_path, "bad-smi", "echo first >&2\necho 'driver not loaded' >&2\nexit 9\n")
    r = run_command([tool])
    assert r.returncode == 9 and r.failure_reason() == "bad-smi exited 9: driver not loaded"


def test_timeout_kills_the_wrappers_children_too(tmp_path):
    # A wrapper script whose child keeps stdout open: killing only the wrapper would leave
    # communicate() waiting for the grandchild (60 s) to close the pipe.
    marker = tmp_path / "child.pid"
    tool = _tool(tmp_path, "hung-smi", f"echo partial\nsleep 60 &\necho $! > {marker}\nwait\n")
    r = run_command([tool], timeout=1.0)
    assert r.timed_out and r.returncode is None
    assert r.stdout.startswith("partial")
    child = int(marker.read_text())
    time.sleep(0.2)
    try:
        os.kill(child, 0)
        alive = open(f"/proc/{child}/stat").read().split()[2] != "Z"
    except ProcessLookupError:
        alive = False
    assert not alive, "the tool's child outlived the timeout"


def test_input_text_reaches_stdin(tmp_path):
    tool = _tool(tmp_path, "cat-tool", "cat\n")
    assert run_command([tool], input_text="hello").stdout == "hello"
