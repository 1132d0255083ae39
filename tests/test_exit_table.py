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


def _code_of(value, where: str) -> str:
    """A ``code=`` argument as the table sees it: a literal itself; an f-string with a literal
    start (``f"download_{kind}"``) the family ``download_*``; anything else ``?`` and its source."""
    import ast

    if isinstance(value, ast.Constant) and isinstance(value.value, str):
        return value.value
    if isinstance(value, ast.JoinedStr) and value.values and isinstance(value.values[0], ast.Constant) \
            and value.values[0].value:
        return value.values[0].value + "*"
    return f"?{ast.unparse(value)} at {where}"


def _raised_codes() -> dict[str, set[int]]:
    """Every ``errors[].code`` an AiboxError in src/ can carry, with the exit code(s) it gets: each
    ``code = "..."`` of an AiboxError subclass and each ``code="..."`` passed to one (found by
    reading the source, so a new code cannot be missed), the exit code decided as AiboxError does
    (the table, else the class's)."""
    import ast
    import importlib

    from aiboxctl.errors import exit_code_for

    src = ROOT / "src"
    classes: dict[str, tuple[list[str], str | None, str]] = {}  # name -> (bases, class code, module)
    calls: list[tuple[str, str]] = []  # (callee, code)
    for f in sorted((src / "aiboxctl").rglob("*.py")):
        module = ".".join(f.relative_to(src).with_suffix("").parts)
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                code = next((st.value.value for st in node.body if isinstance(st, ast.Assign)
                             and any(isinstance(t, ast.Name) and t.id == "code" for t in st.targets)
                             and isinstance(st.value, ast.Constant)), None)
                bases = [b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases]
                classes.setdefault(node.name, (bases, code, module))
            elif isinstance(node, ast.Call):
                callee = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
                for kw in node.keywords:
                    if kw.arg == "code":
                        calls.append((callee, _code_of(kw.value, f"{f.relative_to(ROOT)}:{node.lineno}")))

    def is_aibox(name: str, depth: int = 0) -> bool:
        return name == "AiboxError" or (name in classes and depth < 20
                                        and any(is_aibox(b, depth + 1) for b in classes[name][0]))

    def exit_of(name: str, code: str) -> int:  # a family's members are not in the table (their names vary)
        cls = getattr(importlib.import_module(classes[name][2]), name)
        return int(cls.exit_code if code.endswith("*") else exit_code_for(code, cls.exit_code))

    found: dict[str, set[int]] = {}
    for callee, code in calls:
        if is_aibox(callee) and code.startswith("?"):  # (not an error class: a Refusal, an HTTP body)
            raise AssertionError(f"code={code[1:]} passed to {callee}: not a string this scan can read; "
                                 "use a literal, or an f-string that starts with one (a family: prefix_*)")
    for name, (_, code, _) in classes.items():
        if code is not None and is_aibox(name):
            found.setdefault(code, set()).add(exit_of(name, code))
    for callee, code in calls:
        if is_aibox(callee):
            found.setdefault(code, set()).add(exit_of(callee, code))
    return found


def test_readme_table_lists_every_code_raised_in_src():
    """Every code an AiboxError in src/ carries is on README's row of the exit code it gets (one
    exit code per code), and the table names no code that nothing raises."""
    readme = (ROOT / "README.md").read_text()
    rows = {int(line.split("|")[1]): line.split("|")[3] for line in readme.splitlines()
            if line.startswith("| ") and line.split("|")[1].strip().isdigit()}
    found = _raised_codes()
    # the scan sees calls, classes and f-string families
    assert "wheel_slim_failed" in found and "install_interrupted" in found and "download_*" in found
    import re

    listed = {c for cell in rows.values() for c in re.findall(r"`([a-z0-9_]+)`", cell)}
    for code, exits in sorted(found.items()):
        assert len(exits) == 1, f"{code} exits with {sorted(exits)} depending on the class that raises it"
        (exit_code,) = exits
        if code.endswith("*"):  # a family (f"download_{kind}"): on its row as `download_<kind>` and what kind is
            assert f"`{code[:-1]}<" in rows[exit_code], \
                f"the codes {code} (exit {exit_code}) are not on README's exit-code row {exit_code} as `{code[:-1]}<…>`"
        else:
            assert f"`{code}`" in rows[exit_code], f"{code} (exit {exit_code}) is not on README's exit-code row {exit_code}"
    families = tuple(c[:-1] for c in found if c.endswith("*"))
    unknown = {c for c in listed if c not in found and c not in EXIT_CODES and not c.startswith(families)}
    assert not unknown, f"README lists codes nothing raises: {unknown}"
