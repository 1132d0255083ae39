"""Several engines behind the front door (issue 14): what a plan of more than one instance renders
to (one engine config per replica on its own loopback port with the internal key, the vendor's
visibility variable per replica, gateway.yaml, the systemd template unit and the front door's unit,
both verified by systemd-analyze), and end to end under --root with the built-in supervisor: SmolLM2
chat + the all-MiniLM embedding model served on one port, status per instance, logs/restart of one
instance, uninstall leaving nothing the manifest listed and no process behind."""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from aiboxctl.deploy.instances import PlannedInstance, instance_entries, new_internal_keys
from aiboxctl.deploy.spec import render_appliance
from aiboxctl.engine_settings import EngineSettings
from aiboxctl.gateway.config import load_gateway_config, read_token
from installprefix import InstallPrefix
from test_render import make_spec, unit_lines, verify_unit, write_all

needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                           reason="systemd-analyze not installed (CI installs it)")


def multi_spec(root: Path, *, user: str = "root"):
    spec = make_spec(root, api_key=False, user=user)
    chat = EngineSettings(role="chat", n_gpu_layers=65, parallel=5, n_ctx=40960)
    emb = EngineSettings(role="embedding", parallel=64, n_ctx=8192, n_batch=8192, n_ubatch=8192)
    planned = [PlannedInstance("chat-0", "chat", "qwen-32b", "Q8_0", chat, {"CUDA_VISIBLE_DEVICES": "0,1"},
                               ("CUDA0", "CUDA1"), None),
               PlannedInstance("chat-1", "chat", "qwen-32b", "Q8_0", chat, {"CUDA_VISIBLE_DEVICES": "2,3"},
                               ("CUDA2", "CUDA3"), None),
               PlannedInstance("embedding", "embedding", "bge-m3", "F16", emb, {}, (), None)]
    paths = {"chat-0": "/opt/models/q.gguf", "chat-1": "/opt/models/q.gguf", "embedding": "/opt/models/bge.gguf"}
    entries = instance_entries(spec.layout, planned, paths, spec.engine.port)
    return dataclasses.replace(spec, instances=entries)


def test_a_set_renders_one_config_per_engine_and_the_front_door(tmp_path):
    spec = multi_spec(tmp_path)
    files = render_appliance(spec, None, new_internal_keys())
    names = [str(Path(f.path).relative_to(tmp_path)) for f in files]
    assert "etc/aibox/engine.yaml" not in names and "etc/systemd/system/aibox.service" not in names
    for n in ("chat-0", "chat-1", "embedding"):
        assert f"etc/aibox/engines/{n}.yaml" in names and f"etc/aibox/engines/{n}.env" in names
    assert {"etc/aibox/gateway.yaml", "etc/aibox/engine-keys", "etc/systemd/system/aibox-engine@.service",
            "etc/systemd/system/aibox-gateway.service"} <= set(names)
    write_all(files)
    etc = spec.layout.etc
    assert (etc / "engines/chat-1.env").read_text().splitlines()[-1] == "CUDA_VISIBLE_DEVICES=2,3"
    assert "VISIBLE" not in (etc / "engines/embedding.env").read_text()
    ports = set()
    for n in ("chat-0", "chat-1", "embedding"):
        cfg = EngineSettings.from_mapping(yaml.safe_load((etc / f"engines/{n}.yaml").read_text()))
        assert cfg.host == "127.0.0.1" and cfg.api_keys_file == etc / "engine-keys"
        ports.add(cfg.port)
    assert ports == {8081, 8082, 8083}
    modes = {Path(f.path).name: f.mode for f in files}
    assert modes["engine-keys"] == 0o600
    gw = load_gateway_config(etc / "gateway.yaml")
    assert (gw.host, gw.port) == ("127.0.0.1", 8080)
    assert read_token(gw.internal_token_file).startswith("sk-aibox-internal-")
    assert [(e.name, e.role, e.replica_group) for e in gw.engines] == \
        [("chat-0", "chat", "chat"), ("chat-1", "chat", "chat"), ("embedding", "embedding", "embedding")]
    assert render_appliance(spec, None, "k\n") == render_appliance(spec, None, "k\n")


def test_a_set_with_a_client_key_renders_governed_access_and_tls(tmp_path):
    """Issue 16: the front door checks client keys now, so a set with a key (the demo's api_key:
    true, gov-office) renders the access files into gateway.yaml instead of being refused: the key
    file holds the first admin key only as a salted hash, the key itself is in the admin-key file
    (0600) that chat/bench/status read, and TLS comes from a local CA."""
    from aiboxctl.access.keys import KeyRing
    from aiboxctl.deploy.access_files import access_files, admin_key_path
    from aiboxctl.deploy.endpoint import endpoint_from_install

    spec = multi_spec(tmp_path)
    spec = dataclasses.replace(spec, access=True, tls=True,
                               engine=spec.engine.replace(api_keys_file=admin_key_path(spec.layout)))
    access = access_files(spec)
    assert access.new_admin_key and access.new_admin_key in access.admin_key_text
    files = render_appliance(spec, access.admin_key_text, new_internal_keys(), access.files)
    write_all(files)
    etc = spec.layout.etc
    modes = {str(Path(f.path).relative_to(etc)): f.mode for f in files if str(f.path).startswith(str(etc))}
    assert {modes[n] for n in ("keys.json", "admin-key", "box-secret", "tls/ca.key", "tls/server.key")} == {0o600}
    assert modes["tls/ca.crt"] == 0o644
    assert access.new_admin_key not in (etc / "keys.json").read_text()
    gw = load_gateway_config(etc / "gateway.yaml")
    assert gw.scheme == "https" and gw.tls_dir == etc / "tls"
    settings = gw.access_settings()
    assert settings is not None and settings.keys_file == etc / "keys.json"
    assert settings.ledger_file == tmp_path / "var/lib/aibox/usage.db"
    assert KeyRing(settings.keys_file).authenticate(f"Bearer {access.new_admin_key}").admin
    ep = endpoint_from_install(tmp_path)
    # the LAN gets HTTPS only; this box's own tools use plain HTTP on loopback (port + 1000)
    assert ep.url == "http://127.0.0.1:9080" and ep.api_key == access.new_admin_key
    assert ep.ca_file is None
    # a second run keeps every access file byte for byte (no new key, the same CA)
    again = access_files(spec)
    assert again.new_admin_key is None and {f.path: f.content for f in again.files} == \
        {f.path: f.content for f in access.files}


@needs_systemd_analyze
def test_the_set_units_verify_and_keep_the_hardening(tmp_path):
    spec = multi_spec(tmp_path, user="aibox")
    write_all(render_appliance(spec, None, "gateway:k\n"))
    units = spec.layout.unit_dir
    # a template verifies as an instance of it
    shutil.copy(units / "aibox-engine@.service", units / "aibox-engine@chat-0.service")
    for name in ("aibox-engine@chat-0.service", "aibox-gateway.service"):
        assert verify_unit(tmp_path, units / name) == "", name
        proc = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--threshold=25", str(units / name)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and " OK" in proc.stdout, proc.stdout[-800:] + proc.stderr[-800:]
    engine = unit_lines((units / "aibox-engine@.service").read_text())
    assert f"ExecStart={json.dumps(spec.exec_argv[0])} \"serve\" \"--config\" " \
           f"\"{spec.layout.etc}/engines/%i.yaml\"" in engine
    assert f"EnvironmentFile=-{spec.layout.etc}/engines/%i.env" in engine
    assert f"StandardOutput=append:{spec.layout.log}/%i.log" in engine
    assert "PrivateDevices=yes" not in engine  # the chat replicas need their GPUs
    gateway = unit_lines((units / "aibox-gateway.service").read_text())
    assert "PrivateDevices=yes" in gateway and any('"gateway" "--config"' in ln for ln in gateway)
    for setting in ("NoNewPrivileges=yes", "ProtectSystem=strict", "CapabilityBoundingSet=", "Restart=on-failure"):
        assert setting in engine and setting in gateway


# --- end to end -------------------------------------------------------------------------------


def _free_port_pair() -> int:
    """A port P with P+1 and P+2 free too (the front door and two engines)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port > 60000:
            continue
        try:
            socks = []
            for p in (port, port + 1, port + 2):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no three free ports in a row")


@pytest.mark.slow
def test_two_instances_install_serve_on_one_port_and_uninstall_cleanly(tmp_path):
    import httpx

    import bertgguf

    embedder = bertgguf.embedding_gguf()
    demo = (Path(__file__).resolve().parents[1] / "profiles" / "demo.yaml").read_text()
    profile = tmp_path / "demo-kb.yaml"
    profile.write_text(demo.replace("name: demo", "name: demo-kb").replace("users: 4", "users: 2")
                       .replace("api_key: true", "api_key: false")
                       + f"roles: [chat, embedding]\nembedding_models: [{json.dumps(str(embedder))}]\n")
    prefix = InstallPrefix(tmp_path / "root", tmp_path / "home")
    root, port = prefix.root, _free_port_pair()

    def run(*args: str, timeout: float = 300):
        return prefix.run(*args, "--root", str(root), timeout=timeout)

    def run_json(*args: str, timeout: float = 300):
        return prefix.json(*args, "--root", str(root), timeout=timeout)

    try:
        code, doc = run_json("install", "--profile", str(profile), "--port", str(port), "--yes", timeout=600)
        assert code == 0, doc["errors"]
        data = doc["data"]
        assert data["endpoint"] == f"http://127.0.0.1:{port}/v1" and data["manager"] == "supervisor"
        assert data["smoke"]["answer"]
        manifest = json.loads((root / "var/lib/aibox/install-manifest.json").read_text())
        assert [s["name"] for s in manifest["services_enabled"]] == \
            ["aibox-engine@chat.service", "aibox-engine@embedding.service", "aibox-gateway.service"]
        code, st = run_json("status")
        assert code == 0 and st["data"]["healthy"], st
        inst = {i["name"]: i for i in st["data"]["instances"]}
        assert set(inst) == {"chat", "embedding"} and all(i["healthy"] for i in inst.values())
        assert (inst["chat"]["role"], inst["embedding"]["role"]) == ("chat", "embedding")
        assert inst["chat"]["slots_busy"] == 0 and inst["chat"]["slots_free"] == 2
        # one port: chat and embeddings through the front door; the engines refuse anyone else
        with httpx.Client(timeout=120) as c:
            models = c.get(f"http://127.0.0.1:{port}/v1/models").json()["data"]
            assert {m["id"]: m["role"] for m in models} == {"smollm2-135m-instruct": "chat", embedder.stem: "embedding"}
            r = c.post(f"http://127.0.0.1:{port}/v1/embeddings", json={"model": embedder.stem, "input": "hello"})
            assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 384
            r = c.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                       json={"model": "smollm2-135m-instruct", "max_tokens": 4,
                             "messages": [{"role": "user", "content": "Hi"}]})
            assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
            assert c.get(f"http://127.0.0.1:{inst['embedding']['port']}/v1/models").status_code == 401
        # one instance restarted, the rest untouched; its own log
        chat_pid = st["data"]["instances"][0]["pid"]
        emb_pid = inst["embedding"]["pid"]
        proc = run("restart", "embedding")
        assert proc.returncode == 0, proc.stderr
        _, st2 = run_json("status")
        after = {i["name"]: i for i in st2["data"]["instances"]}
        assert after["embedding"]["pid"] != emb_pid and after["chat"]["pid"] == chat_pid
        assert after["embedding"]["healthy"]
        proc = run("logs", "embedding", "-n", "200")
        assert proc.returncode == 0 and "ready: " in proc.stdout and "embedding" in proc.stdout
        proc = run("logs", "nope")
        assert proc.returncode == 2 and "no instance named 'nope'" in proc.stderr
        # re-running with the same inputs changes nothing
        code, again = run_json("install", "--profile", str(profile), "--port", str(port), "--yes", timeout=600)
        assert code == 0 and again["data"]["changed"] == 0, again
        _a_hung_replica_shows_in_status(run, run_json, port, after["chat"]["pid"])
    finally:
        code, un = run_json("uninstall", "--yes")
    assert code == 0, un
    listed = [f["path"] for f in manifest["files"]]
    assert listed and not any(Path(p).exists() for p in listed)
    assert not [p for p in root.rglob("*") if p.is_file() and "var/log" not in str(p)]
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(root) not in ps


def _a_hung_replica_shows_in_status(run, run_json, port: int, chat_pid: int) -> None:
    """The chat engine stopped (SIGSTOP): the front door first counts it slow (its health checks
    time out, it stays in), then takes it out; `status` said neither (the front door's /health
    carries both). Now a slow replica is a warning and one taken out a problem with the front
    door's reason, in --json and in the human view; SIGCONT: healthy again.

    Each status is checked against the front door's /health as that status read it (its
    data.health), so no window has to be hit: the reason's count goes on (3, 4, … timed out in a
    row) while the replica is out. Slow lasts only the checks left before it goes out (~8 s at
    the defaults); a status that read it out already (a loaded box) is tried again, stopped anew."""
    import os
    import signal

    import httpx

    from test_engine_support import wait_until

    model = "smollm2-135m-instruct"

    def replica() -> tuple[str | None, str | None]:  # (slow reason, down reason) at the front door
        m = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).json()["models"][model]
        return m["slow"].get("chat"), m["down"].get("chat")

    def seen(st: dict, kind: str) -> str | None:  # what the front door's /health said to this status
        return ((st["data"]["health"].get("models") or {}).get(model, {}).get(kind) or {}).get("chat")

    try:
        for attempt in range(3):
            os.kill(chat_pid, signal.SIGSTOP)
            assert wait_until(lambda: replica()[0] is not None, timeout=60, interval=0.05), replica()
            code, st = run_json("status")
            why = seen(st, "slow")
            if why:
                break
            os.kill(chat_pid, signal.SIGCONT)  # it read the replica out already: again
            assert wait_until(lambda: replica() == (None, None), timeout=120), replica()
        assert why, f"status never read the front door while the replica was slow ({attempt + 1} tries)"
        assert why.startswith("health check slow"), why
        assert code == 5 and f"the front door counts chat ({model}) as slow: {why}" in st["data"]["warnings"], \
            st["data"]["warnings"]
        assert wait_until(lambda: replica()[1] is not None, timeout=60), replica()
        code, st = run_json("status")
        why = seen(st, "down")
        assert why and why.startswith("health check timed out"), st["data"]["health"]
        assert code == 5 and f"the front door took chat ({model}) out: {why}" in st["data"]["problems"], \
            st["data"]["problems"]
        human = run("status")
        assert human.returncode == 5, human.stderr
        assert f"the front door took chat ({model}) out: health check timed out" in human.stderr, human.stderr
    finally:
        os.kill(chat_pid, signal.SIGCONT)
    assert wait_until(lambda: replica() == (None, None), timeout=120), replica()
