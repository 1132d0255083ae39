"""Issue 16's install side: a profile that serves beyond loopback installs the front door with TLS
and governed access — a local CA and server certificate, the first admin key (a salted hash in
keys.json, the key shown once), the URL colleagues use and the CA's fingerprint. End to end under
--root with the real model and the real `openai` client. The "LAN" here is 127.0.0.2 (the profile
says tls: true): traffic never leaves 127.0.0.0/8."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
import yaml

from aiboxctl.access import tls
from installprefix import InstallPrefix

LAN = "127.0.0.2"


def _run(tmp_path: Path, root: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return InstallPrefix(root, tmp_path / "home").run(*args, "--root", str(root), timeout=timeout)


def _json(proc: subprocess.CompletedProcess) -> dict:
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"not JSON (exit {proc.returncode}): {proc.stdout[-500:]} {proc.stderr[-2000:]}")


def _org_pair(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The organisation's CA and a server certificate for the LAN address (the project's CA code)."""
    org = tls.TlsFiles(tmp_path / "org")
    tls.init_local(org, ["localhost", "127.0.0.1", LAN])
    return org.cert, org.key, org.ca_cert


def test_a_key_that_is_not_the_certificates_is_one_line_exit_2_and_writes_nothing(tmp_path):
    cert, _, _ = _org_pair(tmp_path)
    other = tls.TlsFiles(tmp_path / "other")
    tls.init_local(other, ["localhost"])
    root = tmp_path / "root"
    proc = _run(tmp_path, root, "install", "--profile", "demo", "--tls-cert", str(cert), "--tls-key", str(other.key),
                "--yes")
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert "does not belong to the certificate" in lines[0] and "Traceback" not in proc.stderr
    assert not root.exists() or not any(p.is_file() for p in root.rglob("*"))
    proc = _run(tmp_path, root, "install", "--profile", "demo", "--tls-cert", str(cert), "--yes")
    assert proc.returncode == 2 and "go together" in proc.stderr


def _lan_port() -> int:
    """A port P free on 127.0.0.2 with P+1 and P+1000 free on 127.0.0.1 (the front door, its engine
    and the front door's plain-HTTP port for this box's own tools)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((LAN, 0))
            port = s.getsockname()[1]
        if port > 60000:
            continue
        try:
            with socket.socket() as a, socket.socket() as b, socket.socket() as c:
                a.bind((LAN, port))
                b.bind(("127.0.0.1", port + 1))
                c.bind(("127.0.0.1", port + 1000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair")


def _ask(url: str, key: str | None, ca: Path | None):
    import httpx
    import openai

    verify = ssl.create_default_context(cafile=str(ca)) if ca else True
    client = openai.OpenAI(base_url=url, api_key=key or "none", max_retries=0,
                           http_client=httpx.Client(verify=verify, trust_env=False, timeout=120))
    r = client.chat.completions.create(model="smollm2-135m-instruct", max_tokens=4,
                                       messages=[{"role": "user", "content": "Hi"}])
    return r.choices[0].message.content


@pytest.mark.slow
def test_lan_profile_installs_https_front_door_with_keys_renews_and_uninstalls(tmp_path):
    import openai

    demo = (Path(__file__).resolve().parents[1] / "profiles" / "demo.yaml").read_text()
    profile = tmp_path / "office.yaml"
    profile.write_text(demo.replace("name: demo", "name: office").replace("users: 4", "users: 2").replace(
        "security: {bind: 127.0.0.1, api_key: true, audit_log: false,",
        f"security: {{bind: {LAN}, tls: true, api_key: true, audit_log: true,"))
    root, port = tmp_path / "root", _lan_port()
    etc = root / "etc/aibox"
    try:
        proc = _run(tmp_path, root, "install", "--profile", str(profile), "--port", str(port), "--yes", "--json",
                    timeout=600)
        doc = _json(proc)
        assert proc.returncode == 0, doc["errors"]
        data = doc["data"]
        url = f"https://{LAN}:{port}/v1"
        assert data["endpoint"] == url and data["lan_url"] == url
        ca = Path(data["ca_file"])
        assert ca == etc / "tls/ca.crt"
        assert data["ca_fingerprint"] == tls.describe(ca).fingerprint_sha256
        key = data["admin_key"]
        assert key.startswith("sk-aibox-") and key not in (etc / "keys.json").read_text()
        assert (etc / "admin-key").stat().st_mode & 0o777 == 0o600
        assert data["smoke"]["answer"]
        manifest = json.loads((root / "var/lib/aibox/install-manifest.json").read_text())
        assert [s["name"] for s in manifest["services_enabled"]] == ["aibox-engine@chat.service",
                                                                     "aibox-gateway.service"]
        # the real openai client: with the CA file it talks HTTPS, without it the handshake is refused
        assert _ask(url, key, ca)
        with pytest.raises(openai.APIConnectionError):
            _ask(url, key, None)
        with pytest.raises(openai.AuthenticationError):
            _ask(url, "sk-aibox-000000000000-wrong", ca)
        # this box's tools find the endpoint and the key themselves: plain HTTP on loopback (the
        # rendered loopback_port), while the LAN address speaks HTTPS only
        plain = f"http://127.0.0.1:{port + 1000}/v1"
        assert yaml.safe_load((etc / "gateway.yaml").read_text())["loopback_port"] == port + 1000
        assert _ask(plain, key, None)
        with pytest.raises(openai.APIConnectionError):
            _ask(f"http://{LAN}:{port}/v1", key, None)
        proc = _run(tmp_path, root, "chat", "-p", "Hi")
        assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr
        st = _json(_run(tmp_path, root, "status", "--json"))
        assert st["ok"] and st["data"]["healthy"] and st["data"]["endpoint"] == plain
        # the human summary prints the URL colleagues use with the CA's fingerprint
        again = _run(tmp_path, root, "install", "--profile", str(profile), "--port", str(port), "--yes",
                     timeout=600)
        assert again.returncode == 0, again.stderr
        assert "0 changes" in again.stdout and url in again.stdout and data["ca_fingerprint"] in again.stdout
        assert "admin key" not in again.stdout  # shown once, when made
        # renew: same CA (clients keep trusting it), a new server certificate, served at once
        ca_before, cert_before = ca.read_bytes(), (etc / "tls/server.crt").read_bytes()
        proc = _run(tmp_path, root, "tls", "renew")
        assert proc.returncode == 0 and "restarted" in proc.stdout, proc.stderr
        assert ca.read_bytes() == ca_before and (etc / "tls/server.crt").read_bytes() != cert_before
        assert LAN in tls.describe(etc / "tls/server.crt").names
        served = ssl.get_server_certificate((LAN, port), ca_certs=str(ca))
        assert served.encode() in (etc / "tls/server.crt").read_bytes()
        assert _ask(url, key, ca)
        # the organisation's certificate and key instead: the local CA's files go, the org CA works
        cert, org_key, org_ca = _org_pair(tmp_path)
        proc = _run(tmp_path, root, "install", "--profile", str(profile), "--port", str(port), "--tls-cert",
                    str(cert), "--tls-key", str(org_key), "--yes", "--json", timeout=600)
        org = _json(proc)
        assert proc.returncode == 0, org["errors"]
        assert org["data"]["ca_file"] is None and org["data"]["admin_key"] is None
        assert org["data"]["ca_fingerprint"] == tls.describe(cert).fingerprint_sha256
        assert not ca.exists() and _ask(url, key, org_ca)
        old_ca = tmp_path / "old-ca.crt"
        old_ca.write_bytes(ca_before)
        with pytest.raises(openai.APIConnectionError):  # the local CA no longer vouches for the server
            _ask(url, key, old_ca)
        manifest = json.loads((root / "var/lib/aibox/install-manifest.json").read_text())
    finally:
        un = _run(tmp_path, root, "uninstall", "--yes", "--json")
    assert un.returncode == 0, un.stderr
    listed = [f["path"] for f in manifest["files"]]
    assert str(etc / "tls/server.key") in listed and str(etc / "keys.json") in listed
    assert not any(Path(p).exists() for p in listed)
    assert not (etc / "tls").exists() and not (etc / "keys.json.lock").exists()
    # the usage ledger is a record: kept (like the logs) unless --purge
    assert str(root / "var/lib/aibox/usage.db") in _json(un)["data"]["kept"]
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(root) not in ps


@pytest.mark.slow
def test_upgrading_a_single_engine_install_to_the_front_door_keeps_its_plaintext_keys_as_hashed_named_keys(tmp_path):
    """Wave 1 kept the engine's keys in plain text (etc/aibox/api_keys, named by engine.yaml). The
    upgrade to a departmental install behind the front door imports each as a named key (a salted
    hash in keys.json): the old secret still gets 200, and no file of the installation holds it."""
    root, port = tmp_path / "root", _lan_port()
    etc = root / "etc/aibox"
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # the single engine's port on loopback
    try:
        proc = _run(tmp_path, root, "install", "--profile", "demo", "--port", str(port), "--yes", "--json",
                    timeout=600)
        assert proc.returncode == 0, _json(proc)["errors"]
        (etc / "api_keys").write_text((etc / "api_keys").read_text() + "alice:my-old-team-key-1234567890\n")
        old = [line.split(":", 1)[1] for line in (etc / "api_keys").read_text().splitlines()
               if line and not line.startswith("#")]
        assert len(old) == 2 and _ask(f"http://127.0.0.1:{port}/v1", old[0], None)
        proc = _run(tmp_path, root, "install", "--profile", str(_office_profile(tmp_path)), "--port", str(port),
                    "--yes", "--json", timeout=600)
        data = _json(proc)
        assert proc.returncode == 0, data["errors"]
        ca = etc / "tls/ca.crt"
        for secret in old:  # the old secrets keep working, over HTTPS and on loopback
            assert _ask(f"https://{LAN}:{port}/v1", secret, ca)
            assert _ask(f"http://127.0.0.1:{port + 1000}/v1", secret, None)
        names = {k["name"] for k in json.loads((etc / "keys.json").read_text())["keys"]}
        assert names == {"admin", "wave1-1", "alice"}  # wave 1's 'admin' is not the new admin key
        assert not (etc / "api_keys").exists()
        kept = root / "var/lib/aibox/generations"  # the previous generation, byte for byte, for rollback
        for f in root.rglob("*"):
            if f.is_file() and f.stat().st_size < 1 << 20 and any(s.encode() in f.read_bytes() for s in old):
                assert kept in f.parents and f.stat().st_mode & 0o077 == 0, f
    finally:
        un = _run(tmp_path, root, "uninstall", "--yes", "--json")
    assert un.returncode == 0, un.stderr


def _office_profile(tmp_path: Path) -> Path:
    demo = (Path(__file__).resolve().parents[1] / "profiles" / "demo.yaml").read_text()
    profile = tmp_path / "office.yaml"
    profile.write_text(demo.replace("name: demo", "name: office").replace("users: 4", "users: 2").replace(
        "security: {bind: 127.0.0.1, api_key: true, audit_log: false,",
        f"security: {{bind: {LAN}, tls: true, api_key: true, audit_log: true,"))
    return profile
