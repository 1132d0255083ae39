"""Issue 19: `upgrade --model X` asks (or, without a person and --yes, refuses) before it
plans, pulls or changes anything — not after downloading the weights."""

from __future__ import annotations

import json


def test_upgrade_without_yes_refuses_before_pulling(install_prefix):
    run, root = install_prefix.run, install_prefix.root
    r = run("install", "--profile", "demo", "--root", str(root), "--port", str(install_prefix.port), "--yes", "--json")
    assert r.returncode == 0, r.stdout[-800:] + r.stderr[-1500:]
    manifest = (root / "var/lib/aibox/install-manifest.json").read_bytes()
    models_before = sorted(p.name for p in (install_prefix.home / "models").rglob("*") if p.is_file())
    r = run("upgrade", "--root", str(root), "--model", "qwen3-0.6b", "--json")
    doc = json.loads(r.stdout)
    assert r.returncode == 2 and doc["errors"][0]["code"] == "confirmation_required", (r.returncode, doc)
    assert "--yes" in doc["errors"][0]["hint"]
    assert "qwen3-0.6b" in doc["errors"][0]["message"]
    r = run("upgrade", "--root", str(root), "--model", "qwen3-0.6b")
    assert r.returncode == 2
    assert "pulling" not in r.stderr and "planning" not in r.stderr, r.stderr
    assert (root / "var/lib/aibox/install-manifest.json").read_bytes() == manifest
    assert sorted(p.name for p in (install_prefix.home / "models").rglob("*") if p.is_file()) == models_before
