"""The conventions every command follows: envelope keys, exit codes, errors, laziness, docs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from aiboxctl.cli.output import ENVELOPE_KEYS
from aiboxctl.errors import ExitCode

ROOT = Path(__file__).resolve().parents[1]


def test_exit_codes_are_the_documented_ones():
    assert {c.name: int(c) for c in ExitCode} == {
        "OK": 0, "ERROR": 1, "USAGE": 2, "DOES_NOT_FIT": 3, "VERIFICATION_FAILED": 4, "SERVICE_DOWN": 5,
        "INTERRUPTED": 130,
    }
    readme = (ROOT / "README.md").read_text()
    for code in ExitCode:
        assert f"| {int(code)} |" in readme, f"exit code {int(code)} not documented in README"


def test_success_envelope_keys(cli):
    r = cli("paths", "--json")
    assert r.code == 0, r.stderr
    doc = r.json()
    assert tuple(doc) == ENVELOPE_KEYS
    assert doc["version"] == 1 and doc["command"] == "paths" and doc["ok"] is True
    assert doc["exit_code"] == 0 and doc["errors"] == []
    assert doc["data"]["state"]["home"]


def test_global_json_flag_before_command(cli):
    r = cli("--json", "paths")
    assert r.code == 0
    assert r.json()["command"] == "paths"


def test_usage_error_is_exit_2_with_envelope(cli):
    r = cli("paths", "--no-such-flag", "--json")
    assert r.code == ExitCode.USAGE
    doc = r.json()
    assert tuple(doc) == ENVELOPE_KEYS
    assert doc["ok"] is False and doc["exit_code"] == 2
    (err,) = doc["errors"]
    assert set(err) == {"code", "message", "hint"} and "no-such-flag" in err["message"]


def test_usage_error_human_is_one_line_on_stderr(cli_proc):
    r = cli_proc("paths", "--no-such-flag")
    assert r.code == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "aiboxctl paths --help" in lines[0]
    assert "Traceback" not in r.stderr


def test_unknown_command_is_usage(cli):
    r = cli("--json", "frobnicate")
    assert r.code == 2 and r.json()["ok"] is False
    r = cli("--json", "prob")
    (err,) = r.json()["errors"]
    assert err["message"].count("Did you mean 'probe'?") == 1
    assert err["hint"] == "aiboxctl --help"


def test_version(cli_proc):
    from aiboxctl import __version__

    r = cli_proc("--version")
    assert r.code == 0 and r.stdout.strip() == f"aiboxctl {__version__}"


def test_help_does_not_import_heavy_modules():
    code = (
        "import sys\n"
        "from aiboxctl.cli.app import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('llama_cpp', 'huggingface_hub', 'pynvml', 'jinja2', 'fastapi', 'uvicorn', 'gguf', 'numpy')"
        " if m in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY=\n" in proc.stdout, proc.stdout[-500:]


def test_docs_cli_md_matches_help():
    from aiboxctl.cli.docs import generate

    current = (ROOT / "docs" / "cli.md").read_text()
    assert current == generate(), "docs/cli.md is stale: run `python -m aiboxctl.cli.docs > docs/cli.md`"


def test_every_command_accepts_json_and_help(cli):
    import click
    import typer

    from aiboxctl.cli.app import app

    root = typer.main.get_command(app)
    ctx = click.Context(root)

    def leaves(cmd, path):
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(ctx):
                yield from leaves(cmd.get_command(ctx, name), [*path, name])
        else:
            yield path, cmd

    for path, cmd in leaves(root, []):
        opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
        assert "--json" in opts, f"{' '.join(path)} lacks --json"
        r = cli(*path, "--help")
        assert r.code == 0, (path, r.stderr)


def test_confirmation_refused_without_tty(monkeypatch):
    import pytest

    from aiboxctl.cli import output
    from aiboxctl.errors import ConfirmationRequired

    monkeypatch.setattr("sys.stdin.isatty", lambda: False, raising=False)
    with pytest.raises(ConfirmationRequired) as info:
        output.confirm("Delete everything?", yes=False)
    assert info.value.hint == "re-run with --yes"
    output.confirm("Delete everything?", yes=True)  # --yes never asks


def test_internal_error_is_one_line_and_traceback_only_with_debug(cli, monkeypatch, capsys):
    def boom():
        raise RuntimeError("boom")

    monkeypatch.setattr("aiboxctl.paths.StatePaths.from_env", staticmethod(boom))
    r = cli("paths", "--json")
    assert r.code == 1
    doc = r.json()
    assert doc["errors"][0]["code"] == "internal" and "boom" in doc["errors"][0]["message"]
    assert "Traceback" not in r.stderr
    monkeypatch.setenv("AIBOX_DEBUG", "1")
    r = cli("paths")
    assert r.code == 1 and "Traceback" in r.stderr and r.stderr.strip().endswith("AIBOX_DEBUG=1 for a traceback and report it)")


def test_human_output_never_turns_data_into_emoji():
    """A certificate fingerprint such as …:82:AB:FD… once printed as …:82🆎FD… (Rich's emoji codes)."""
    import io

    from aiboxctl.cli import output

    console = output.stdout_console()
    console.file = io.StringIO()
    console.print("fingerprint 0F:82:AB:FD:1F :smile: :cd:")
    assert console.file.getvalue().strip() == "fingerprint 0F:82:AB:FD:1F :smile: :cd:"
