"""Every name a bundle manifest carries is data, never a path: a manifest whose profile, model,
file, tag or wheel names would reach outside the staging area is refused when it is loaded,
before anything is written (issue 11 item 2)."""

from __future__ import annotations

import copy
import io
import json
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiboxctl.bundle.manifest import MANIFEST_NAME, BundleManifest, TargetPlatform
from aiboxctl.bundle.pack import Entry, write_bundle
from aiboxctl.errors import AiboxError, ExitCode, UsageError, VerificationFailed

HERE = TargetPlatform.here()
MODEL = b"GGUF" + bytes(range(256)) * 64


def _good_bundle(folder: Path) -> Path:
    """A bundle install --bundle gets past every check of: no wheels (pip is not run), a profile
    file that is not a valid profile (so an install that got that far stops at once)."""
    src = folder / "src" / "tiny.gguf"
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(MODEL)
    out = folder / "good.tar"
    write_bundle(out, [Entry("install.sh", data=b"#!/bin/sh\n", mode=0o755),
                       Entry("profile.yaml", data=b"name: [not a profile\n"),
                       Entry("models/tiny.gguf", source=src)],
                 target=HERE, profile="demo", hardware="cpu-32g",
                 model={"variant": "tiny", "quant": "Q4_1", "path": "models/tiny.gguf", "repo": "local/tiny",
                        "file": "tiny.gguf", "source": "dir"})
    return out


def _with_manifest(good: Path, out: Path, mutate) -> Path:
    """The same members as ``good`` under a manifest changed by ``mutate(doc)``: what an attacker
    who edits the manifest (and need not touch the member hashes) produces."""
    with tarfile.open(good) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
    doc = json.loads(members[0][1])
    mutate(doc)
    raw = json.dumps(doc).encode()
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo(MANIFEST_NAME)
        info.size = len(raw)
        tf.addfile(info, io.BytesIO(raw))
        for m, data in members[1:]:
            tf.addfile(m, io.BytesIO(data))
    return out


def _files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


def test_bundle_profile_that_climbs_out_is_refused_and_nothing_is_written(tmp_path, cli, monkeypatch):
    """The exact attack: profile ``../../../../tmp/x`` made ``install --bundle`` copy the bundled
    profile to ``<AIBOX_HOME>/bundles/<id>/../../../../tmp/x.yaml``, outside the staging area."""
    home = tmp_path / "a" / "b" / "home"
    monkeypatch.setenv("AIBOX_HOME", str(home))
    outside = tmp_path / "a" / "tmp"  # where the four ".." land from home/bundles/<id>
    outside.mkdir(parents=True)
    evil = _with_manifest(_good_bundle(tmp_path / "pack"), tmp_path / "evil.tar",
                          lambda doc: doc.update(profile="../../../../tmp/x"))
    before = _files_under(tmp_path)
    r = cli("install", "--bundle", str(evil), "--root", str(tmp_path / "root"), "--yes", "--json")
    assert r.code == ExitCode.VERIFICATION_FAILED, r.stdout + r.stderr
    err = r.json()["errors"][0]
    assert err["code"] == "bundle_unsafe_name" and "profile '../../../../tmp/x'" in err["message"]
    assert not (outside / "x.yaml").exists()
    assert _files_under(tmp_path) == before  # refused at load: not even the weights were filed
    assert not (tmp_path / "root").exists()


@pytest.mark.parametrize("field, value", [
    ("profile", "../x"), ("profile", "/etc/cron.d/x"), ("profile", "a/b"), ("profile", "x\x00y"),
    ("profile", ".hidden"), ("profile", "-rf"), ("profile", "p" * 201), ("profile", ["demo"]),
    ("hardware", "../../hw"),
    ("model.variant", "../v"), ("model.quant", "Q4/../../x"), ("model.repo", "../../etc"),
    ("model.repo", "owner/.."), ("model.file", "../../../x.gguf"), ("model.file", "/abs.gguf"),
    ("model.path", "models/../../x"), ("model.files", [{"path": "models/tiny.gguf", "file": "../x"}]),
    ("model.files", [{"path": "models/tiny.gguf", "file": "tiny.gguf", "repo": "a/../../b"}]),
    ("model.files", "models/tiny.gguf"), ("model.revision", "refs/../../x"), ("model.source", "dir:/etc"),
    ("target.python", "3.11/../../x"), ("target.platform", "../linux_x86_64"),
    ("target.implementation", "cp\x00"), ("aiboxctl_version", "1.0 --index-url=http://evil"),
    ("engine_wheel.path", "../w.whl"), ("engine_wheel.file", "../../w.whl"),
    ("engine_wheel.cpu_variants", ["../x"]), ("compress", "../zstd"), ("members.0.mode", 0o4755),
])
def test_every_name_field_is_checked_at_load(tmp_path, field, value):
    raw = _with_manifest(_good_bundle(tmp_path), tmp_path / "x.tar", lambda d: None)
    with tarfile.open(raw) as tf:
        doc = json.loads(tf.extractfile(MANIFEST_NAME).read())
    node = doc
    *parents, last = field.split(".")
    for key in parents:
        node = node[int(key)] if key.isdigit() else node.setdefault(key, {})
    node[last] = value
    with pytest.raises(VerificationFailed) as info:
        BundleManifest.from_bytes(json.dumps(doc).encode())
    assert info.value.code == "bundle_unsafe_name" and info.value.exit_code == ExitCode.VERIFICATION_FAILED


def test_pack_refuses_a_profile_name_install_would_refuse(tmp_path):
    with pytest.raises(UsageError, match="plain name"):
        write_bundle(tmp_path / "b.tar", [Entry("install.sh", data=b"#!/bin/sh\n")], target=HERE,
                     profile="My Office")
    assert not (tmp_path / "b.tar").exists() and not (tmp_path / "b.tar.partial").exists()


# --- fuzz: every field, any JSON value --------------------------------------------------------

_GOOD = {
    "format": "aibox-bundle", "format_version": 1, "aiboxctl_version": "0.1.0", "created": "2026-01-01T00:00:00Z",
    "target": {"python": HERE.python, "implementation": "cp", "platform": HERE.platform},
    "profile": "demo", "hardware": "cpu-32g",
    "model": {"variant": "tiny", "quant": "Q4_1", "path": "models/tiny.gguf", "repo": "local/tiny",
              "file": "tiny.gguf", "source": "dir", "revision": None,
              "files": [{"path": "models/tiny.gguf", "file": "tiny.gguf", "shard": None, "shards": None}]},
    "engine_wheel": {"path": "wheels/llama_cpp_python-0.3.36-cp311-cp311-linux_x86_64.whl", "build": "portable",
                     "cpu_variants": ["x64", "haswell"], "origin": "engine wheel cache (cpu-portable)"},
    "compress": "none",
    "members": [{"path": "profile.yaml", "size": 5, "sha256": "0" * 64, "mode": 0o644},
                {"path": "models/tiny.gguf", "size": 9, "sha256": "1" * 64, "mode": 0o644},
                {"path": "wheels/llama_cpp_python-0.3.36-cp311-cp311-linux_x86_64.whl", "size": 3,
                 "sha256": "2" * 64, "mode": 0o644}],
}
_FIELDS = [("profile",), ("hardware",), ("aiboxctl_version",), ("created",), ("compress",),
           ("target", "python"), ("target", "platform"), ("target", "implementation"),
           ("model", "variant"), ("model", "quant"), ("model", "path"), ("model", "repo"), ("model", "file"),
           ("model", "source"), ("model", "revision"), ("model", "files"), ("model", "files", 0, "path"),
           ("model", "files", 0, "file"), ("model", "files", 0, "repo"), ("model", "files", 0, "shard"),
           ("engine_wheel", "path"), ("engine_wheel", "file"), ("engine_wheel", "cpu_variants"),
           ("members", 0, "path"), ("members", 1, "path"), ("members", 0, "mode"), ("members", 0, "size"),
           ("members",), ("model",), ("target",)]
_NASTY = st.sampled_from(["..", "../", "../../../../tmp/x", "/", "/etc/passwd", "a/../b", "a\\..\\b", "\x00",
                          "x\x00.yaml", "~", "~root", ".", "-", "a" * 300, "models/../../x", "C:\\x", "./x",
                          "a//b", "", " ", "\n"])
_TEXT = st.text(st.characters(codec="utf-8"), max_size=40)
_PATHY = st.lists(st.one_of(_NASTY, _TEXT, st.sampled_from(["models", "tiny.gguf", "x"])), min_size=1,
                  max_size=5).map("/".join)
_VALUES = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), _TEXT, _NASTY, _PATHY),
                       lambda inner: st.one_of(st.lists(inner, max_size=3),
                                               st.dictionaries(_TEXT, inner, max_size=3)), max_leaves=6)


def _inside(path: Path, base: Path) -> bool:
    return path.resolve().is_relative_to(base.resolve())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes=st.lists(st.tuples(st.sampled_from(_FIELDS), _VALUES), min_size=1, max_size=3))
def test_fuzzed_manifest_loads_or_is_refused_and_never_leads_outside(changes):
    from aiboxctl.bundle.offline import _profile_argument
    from aiboxctl.bundle.unpack import model_destination, model_files

    doc = copy.deepcopy(_GOOD)
    for where, value in changes:
        node = doc
        try:
            for key in where[:-1]:
                node = node[key]
            node[where[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change replaced the parent
    try:
        manifest = BundleManifest.from_bytes(json.dumps(doc).encode())
    except AiboxError:
        return
    # Loaded: every place a manifest name reaches stays inside its folder.
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        store, scratch, keep = base / "store", base / "scratch", base / "keep"
        for m in manifest.members:
            assert _inside(scratch / m.path, scratch)
        if model_files(manifest, "0" * 64):
            try:
                dest = model_destination(manifest, store, "0" * 64)
            except UsageError:
                dest = None  # the store's own name check refuses it: nothing is written
            assert dest is None or _inside(dest, store)
        scratch.mkdir()
        (scratch / "profile.yaml").write_text("name: custom\n")
        before = {p for p in base.rglob("*")}
        _profile_argument(manifest, scratch, keep)
        new = {p for p in base.rglob("*")} - before
        assert all(_inside(p, keep) for p in new), new
