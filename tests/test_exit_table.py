"""Issue 19, inputs and outputs: one exit-code table (errors.EXIT_CODES), the same code for the
same failure from every command, tested per command in real child processes."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from aiboxctl.errors import EXIT_CODES, ExitCode

from test_engine_support import smollm2_path

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def busy_port():
    """A port another program listens on (a real bound socket)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield s.getsockname()[1]


def _envelope(r) -> dict:
    try:
        return json.loads(r.stdout)
    except ValueError:
        raise AssertionError(f"not JSON (exit {r.code}): {r.stdout[-400:]} {r.stderr[-1500:]}")


def test_port_in_use_is_one_exit_code_from_install_and_serve(cli_proc, busy_port, tmp_path):
    commands = {
        "serve": ["serve", "--model", str(smollm2_path()), "--port", str(busy_port), "--no-selftest", "--json"],
        "install": ["install", "--profile", "demo", "--root", str(tmp_path / "root"), "--port", str(busy_port),
                    "--yes", "--json"],
    }
    for name, argv in commands.items():
        r = cli_proc(*argv, timeout=300)
        doc = _envelope(r)
        (err,) = doc["errors"]
        assert err["code"] == "port_in_use", (name, err)
        assert r.code == doc["exit_code"] == EXIT_CODES["port_in_use"], (name, r.code)


@pytest.fixture
def broken_yaml(tmp_path) -> Path:
    p = tmp_path / "broken.yaml"
    p.write_text("name: broken\nusers: [1, 2\nspeed: {\n")
    return p


@pytest.mark.parametrize("argv", [
    ["plan", "--profile", "{yaml}"],
    ["plan", "--profile", "demo", "--hardware", "{yaml}"],
    ["install", "--profile", "{yaml}", "--root", "{tmp}/root", "--yes"],
    ["pack", "--profile", "{yaml}", "--hardware", "cpu-32g", "-o", "{tmp}/b.tar"],
    ["pack", "--profile", "demo", "--hardware", "{yaml}", "-o", "{tmp}/b.tar"],
], ids=["plan", "plan-hardware", "install", "pack", "pack-hardware"])
def test_profile_yaml_syntax_error_is_usage(cli_proc, broken_yaml, tmp_path, argv):
    args = [a.replace("{yaml}", str(broken_yaml)).replace("{tmp}", str(tmp_path)) for a in argv]
    r = cli_proc(*args, "--json")
    doc = _envelope(r)
    (err,) = doc["errors"]
    assert err["code"] == "invalid_data_file" and "broken.yaml" in err["message"], err
    assert r.code == doc["exit_code"] == ExitCode.USAGE == 2
    r = cli_proc(*args)
    assert r.code == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_ctrl_c_during_install_is_130_and_says_interrupted(cli_proc, tmp_path):
    # A real SIGINT delivered to the installer at the step before the service starts.
    argv = ["install", "--profile", "demo", "--root", str(tmp_path / "root"), "--port", "0", "--yes"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv[argv.index("0")] = str(port)
    r = cli_proc(*argv, env={"AIBOX_TEST_KILL_AT": "before-start@SIGINT"}, timeout=300)
    assert r.code == 130 == EXIT_CODES["interrupted"], (r.code, r.stderr[-1500:])
    assert "failed ()" not in r.stderr
    assert "interrupted" in r.stderr.lower()
    assert r.stderr.strip().splitlines()[-1].startswith("error: Interrupted"), r.stderr[-500:]
    assert not (tmp_path / "root/etc/aibox/engine.yaml").exists()  # rolled back
    # nothing started for this prefix outlives the rollback (a supervisor spawned just before the
    # interrupt, before its pidfile, once did)
    import psutil

    root = str(tmp_path / "root")
    left = [p.info for p in psutil.process_iter(["pid", "cmdline"]) if root in " ".join(p.info["cmdline"] or [])]
    assert not left, left


def test_ctrl_c_is_130_in_json_too(cli):
    from aiboxctl.errors import from_exception

    info = from_exception(KeyboardInterrupt())
    assert info.exit_code == 130 and info.code == "interrupted"


def test_readme_table_is_the_errors_table():
    """README's exit-code table names every code of errors.EXIT_CODES on its exit code's row."""
    readme = (ROOT / "README.md").read_text()
    rows = {int(line.split("|")[1]): line for line in readme.splitlines()
            if line.startswith("| ") and line.split("|")[1].strip().isdigit()}
    assert set(rows) == {int(c) for c in ExitCode}
    for code, exit_code in EXIT_CODES.items():
        assert f"`{code}`" in rows[int(exit_code)], f"{code} not on README's exit-code row {int(exit_code)}"
