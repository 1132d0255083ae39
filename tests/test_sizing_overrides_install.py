"""Issue 19: --users/--target-tok-s/--ctx on install are recorded in the install's inputs, so
`upgrade` plans with them again; pack writes the overridden profile into the bundle."""

from __future__ import annotations

import json

from aiboxctl.sizing.profiles import load_use_case


def test_install_records_the_overrides_and_upgrade_keeps_them(install_prefix):
    run, root = install_prefix.run, install_prefix.root
    r = run("install", "--profile", "demo", "--root", str(root), "--port", str(install_prefix.port), "--users", "2",
            "--ctx", "1024", "--target-tok-s", "2", "--yes", "--json")
    assert r.returncode == 0, r.stdout[-800:] + r.stderr[-1500:]
    engine = json.loads(r.stdout)["data"]["engine"]
    assert engine["parallel"] == 2 and engine["n_ctx"] == 2 * 1024
    manifest = json.loads((root / "var/lib/aibox/install-manifest.json").read_text())
    assert manifest["spec"]["inputs"]["sizing"] == {"users": 2, "target_tokens_per_s": 2.0,
                                                    "context_per_request": 1024}
    r = run("upgrade", "--root", str(root), "--dry-run", "--yes", "--json")
    assert r.returncode == 0, r.stdout[-800:] + r.stderr[-1500:]
    engine = json.loads(r.stdout)["data"]["engine"]
    assert engine["parallel"] == 2 and engine["n_ctx"] == 2 * 1024  # the demo profile says 4 x 2048


def test_install_with_a_bundle_refuses_overrides(cli, tmp_path):
    r = cli("install", "--bundle", str(tmp_path / "b.tar"), "--users", "3", "--json")
    assert r.code == 2 and "drop --users/--target-tok-s/--ctx" in r.json()["errors"][0]["message"]


def test_pack_writes_the_overridden_profile(tmp_path):
    from aiboxctl.bundle.pack import _profile_with_sizing

    profile = load_use_case("gov-office").with_overrides(users=4, context_per_request=4096)
    path = tmp_path / "profile.yaml"
    path.write_bytes(_profile_with_sizing("gov-office", profile, {"users": 4, "context_per_request": 4096}))
    assert load_use_case(path) == profile


def test_a_bad_bind_flag_is_named_in_the_hint(cli, tmp_path):
    r = cli("install", "--profile", "demo", "--root", str(tmp_path / "root"), "--bind", "not-an-ip", "--dry-run",
            "--json")
    err = r.json()["errors"][0]
    assert r.code == 2 and "not an IP address" in err["message"]
    assert err["hint"].startswith("--bind 127.0.0.1") and "security.bind" not in err["hint"]
