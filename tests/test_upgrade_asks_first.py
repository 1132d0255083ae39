"""Issue 19: `upgrade --model X` asks (or, without a person and --yes, refuses) before it
plans, pulls or changes anything — not after downloading the weights."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

EXE = str(Path(sys.executable).with_name("aiboxctl"))


def test_upgrade_without_yes_refuses_before_pulling(tmp_path):
    env = {**os.environ, "AIBOX_HOME": str(tmp_path / "home"), "NO_COLOR": "1"}
    root = tmp_path / "root"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([EXE, *args], capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL,
                              timeout=300)

    r = run("install", "--profile", "demo", "--root", str(root), "--port", str(port), "--yes", "--json")
    assert r.returncode == 0, r.stdout[-800:] + r.stderr[-1500:]
    try:
        manifest = (root / "var/lib/aibox/install-manifest.json").read_bytes()
        models_before = sorted(p.name for p in (tmp_path / "home/models").rglob("*") if p.is_file())
        r = run("upgrade", "--root", str(root), "--model", "qwen3-0.6b", "--json")
        doc = json.loads(r.stdout)
        assert r.returncode == 2 and doc["errors"][0]["code"] == "confirmation_required", (r.returncode, doc)
        assert "--yes" in doc["errors"][0]["hint"]
        assert "qwen3-0.6b" in doc["errors"][0]["message"]
        r = run("upgrade", "--root", str(root), "--model", "qwen3-0.6b")
        assert r.returncode == 2
        assert "pulling" not in r.stderr and "planning" not in r.stderr, r.stderr
        assert (root / "var/lib/aibox/install-manifest.json").read_bytes() == manifest
        assert sorted(p.name for p in (tmp_path / "home/models").rglob("*") if p.is_file()) == models_before
    finally:
        run("uninstall", "--root", str(root), "--yes")
