"""The access commands end to end (in-process CLI, a temp --root): keys, usage, audit verify,
tls; every failure one line with its documented exit code; --help stays light."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time

from aiboxctl.access.audit import AuditChain, box_secret
from aiboxctl.access.keys import KeyRing
from aiboxctl.access.ledger import Ledger, UsageRecord
from aiboxctl.access.paths import AccessPaths
from aiboxctl.paths import InstallLayout


def paths(root) -> AccessPaths:
    return AccessPaths.for_layout(InstallLayout.for_root(root))


def test_keys_lifecycle(cli, tmp_path):
    root = str(tmp_path)
    r = cli("keys", "add", "alice", "--models", "qwen,deepseek", "--department", "legal", "--rpm", "30",
            "--tokens-per-day", "100000", "--concurrency", "2", "--expires", "90d", "--root", root, "--json")
    assert r.code == 0, r.stdout
    data = r.json()["data"]
    secret = data["secret"]
    assert data["key"]["models"] == ["qwen", "deepseek"] and data["key"]["rpm"] == 30
    assert 89 * 86400 < data["key"]["expires_at"] - time.time() <= 90 * 86400
    stored = paths(tmp_path).keys.read_text()
    assert secret not in stored and "salt" in stored
    ring = KeyRing(paths(tmp_path).keys)
    assert ring.authenticate(f"Bearer {secret}").department == "legal"

    human = cli("keys", "add", "bob", "--admin", "--root", root)
    assert human.code == 0 and human.stdout.strip().startswith("added key 'bob'")
    assert "sk-aibox-" in human.stdout and "only time" in human.stderr

    listed = cli("keys", "list", "--root", root, "--json").json()["data"]["keys"]
    assert [k["name"] for k in listed] == ["alice", "bob"] and "secret" not in json.dumps(listed)
    assert "hash" not in listed[0] and "salt" not in listed[0]

    rotated = cli("keys", "rotate", "alice", "--root", root, "--json").json()["data"]["secret"]
    assert rotated != secret and ring.authenticate(f"Bearer {rotated}").name == "alice"
    assert cli("keys", "revoke", "alice", "--root", root).code == 0
    assert cli("keys", "list", "--root", root, "--json").json()["data"]["keys"][0]["state"] == "revoked"


def test_keys_failures_are_one_line_with_documented_codes(cli, tmp_path):
    root = str(tmp_path)
    cli("keys", "add", "alice", "--root", root)
    for args, code in ((("keys", "add", "alice"), 2), (("keys", "add", "x", "--expires", "soon"), 2),
                       (("keys", "add", "x", "--rpm", "0"), 2), (("keys", "revoke", "nobody"), 1),
                       (("keys", "rotate", "nobody"), 1)):
        r = cli(*args, "--root", root)
        assert r.code == code, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error: ")
    paths(tmp_path).keys.write_text("garbage")
    r = cli("keys", "list", "--root", root)
    assert r.code == 2 and "not a valid aiboxctl key file" in r.stderr


def test_usage_report_json_and_csv(cli, tmp_path):
    now = time.time()
    with Ledger(paths(tmp_path).ledger) as ledger:
        ledger.record(UsageRecord(now - 60, "alice", "legal", "qwen", "chat", 200, 100, 20, 5.0),
                      UsageRecord(now - 30, "bob", "legal", "qwen", "chat", 200, 10, 2, 5.0),
                      UsageRecord(now - 20, "carol", "it", "qwen", "chat", 429, 0, 0, 1.0),
                      UsageRecord(now - 10 * 86400, "alice", "legal", "qwen", "chat", 200, 999, 999, 5.0))
    r = cli("usage", "--since", "7d", "--by", "department", "--root", str(tmp_path), "--json")
    rows = {row["group"]: row for row in r.json()["data"]["rows"]}
    assert rows["legal"]["total_tokens"] == 132 and rows["legal"]["requests"] == 2 and rows["it"]["errors"] == 1
    r = cli("usage", "--since", "30d", "--csv", "--root", str(tmp_path))
    table = list(csv.DictReader(io.StringIO(r.stdout)))
    assert {t["key"]: int(t["total_tokens"]) for t in table} == {"alice": 2118, "bob": 12, "carol": 0}
    human = cli("usage", "--root", str(tmp_path))
    assert human.code == 0 and "alice" in human.stdout
    assert cli("usage", "--by", "colour", "--root", str(tmp_path)).code == 2
    assert cli("usage", "--root", str(tmp_path / "none")).code == 1  # not_found


def test_audit_verify_exit_4_names_the_record(cli, tmp_path):
    p = paths(tmp_path)
    chain = AuditChain(p.audit, box_secret(p.secret))
    for i in range(5):
        chain.append({"event": "request", "key": "alice", "status": 200})
    ok = cli("audit", "verify", "--root", str(tmp_path))
    assert ok.code == 0 and "5 records" in ok.stdout
    lines = p.audit.read_bytes().splitlines(keepends=True)
    p.audit.write_bytes(b"".join(lines[:2] + lines[3:]))
    broken = cli("audit", "verify", "--root", str(tmp_path))
    assert broken.code == 4 and "line 3" in broken.stderr and "3 were removed" in broken.stderr
    assert len(broken.stderr.strip().splitlines()) == 1
    env = cli("audit", "verify", str(p.audit), "--root", str(tmp_path), "--json").json()
    assert env["exit_code"] == 4 and env["data"]["problem"]["kind"] == "removed"
    assert cli("audit", "verify", str(tmp_path / "nope.jsonl"), "--root", str(tmp_path)).code == 1


def test_tls_init_show_renew_and_org_pair(cli, tmp_path):
    root = str(tmp_path)
    r = cli("tls", "init", "--name", "box.lan", "--name", "10.0.0.5", "--root", root, "--json")
    info = r.json()["data"]
    assert r.code == 0 and set(info["names"]) == {"box.lan", "10.0.0.5"} and info["ca_fingerprint_sha256"]
    human = cli("tls", "show", "--root", root)
    assert "CA fingerprint (SHA-256): " + info["ca_fingerprint_sha256"] in human.stdout
    renewed = cli("tls", "renew", "--root", root, "--json").json()["data"]
    assert renewed["ca_fingerprint_sha256"] == info["ca_fingerprint_sha256"]
    other = tmp_path / "other"
    cli("tls", "init", "--name", "x", "--root", str(other))
    tls_dir = paths(tmp_path).tls_dir
    bad = cli("tls", "init", "--tls-cert", str(tls_dir / "server.crt"),
              "--tls-key", str(paths(other).tls_dir / "server.key"), "--root", root)
    assert bad.code == 2 and "does not belong" in bad.stderr
    assert cli("tls", "init", "--tls-cert", str(tls_dir / "server.crt"), "--root", root).code == 2
    assert cli("tls", "show", "--root", str(tmp_path / "none")).code == 1  # not_found


def test_tls_show_warns_when_the_certificate_is_near_its_end(cli, tmp_path):
    """uvicorn serves whatever certificate it loaded: the front door's /health says nothing about
    its expiry, so ``tls show`` does, RENEW_BEFORE_DAYS ahead, with the command that fixes it."""
    from aiboxctl.access.tls import RENEW_BEFORE_DAYS, TlsFiles, create_ca, issue_server_cert

    files = TlsFiles(paths(tmp_path).tls_dir)
    create_ca(files)
    issue_server_cert(files, ["box.lan"], days=RENEW_BEFORE_DAYS + 30)
    assert "warnings" not in cli("tls", "show", "--root", str(tmp_path), "--json").json()["data"]
    issue_server_cert(files, ["box.lan"], days=RENEW_BEFORE_DAYS - 20)
    r = cli("tls", "show", "--root", str(tmp_path), "--json")
    assert r.code == 0
    [warning] = r.json()["data"]["warnings"]
    assert "expires" in warning and "aiboxctl tls renew" in warning


def test_help_does_not_import_the_access_libraries():
    code = ("import sys\nfrom aiboxctl.cli.app import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('HEAVY=' + ','.join(m for m in ('cryptography', 'sqlite3', 'filelock', 'psutil') if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY=\n" in proc.stdout, proc.stdout + proc.stderr
