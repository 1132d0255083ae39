"""Bundle format: round trip, and every kind of bad bundle is refused before anything is written."""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import pytest

from aiboxctl.bundle.archive import read_manifest, scan_bundle
from aiboxctl.bundle.manifest import MANIFEST_NAME, BundleError, BundleManifest, TargetPlatform
from aiboxctl.bundle.pack import Entry, write_bundle
from aiboxctl.bundle.unpack import check_bundle, space_needed, unpack
from aiboxctl.errors import ExitCode, VerificationFailed

HERE = TargetPlatform.here()
MODEL_BYTES = b"GGUF" + bytes(range(256)) * 400 + b"MODEL-TAIL"


def _entries(tmp_path: Path) -> list[Entry]:
    model = tmp_path / "src" / "tiny.gguf"
    model.parent.mkdir(parents=True, exist_ok=True)
    model.write_bytes(MODEL_BYTES)
    return [
        Entry("install.sh", data=b"#!/bin/sh\necho hi\n", mode=0o755),
        Entry("plan.json", data=json.dumps({"variant": "tiny"}).encode()),
        Entry("wheels/example-1.0-py3-none-any.whl", data=b"PK-not-really-a-wheel"),
        Entry("models/tiny.gguf", source=model),
    ]


def _bundle(tmp_path: Path, *, target: TargetPlatform = HERE, compress: str = "none", name="b.tar") -> Path:
    out = tmp_path / name
    write_bundle(out, _entries(tmp_path), target=target, compress=compress, profile="demo", hardware="cpu-32g",
                 model={"variant": "tiny", "quant": "Q4_1", "path": "models/tiny.gguf",
                        "repo": "local/tiny", "file": "tiny.gguf", "source": "dir"})
    return out


def _dirs(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "store", tmp_path / "scratch"


def _nothing_written(tmp_path: Path) -> bool:
    store, scratch = _dirs(tmp_path)
    return not any(p.is_file() for d in (store, scratch) if d.exists() for p in d.rglob("*"))


@pytest.mark.parametrize("compress", ["none", "zstd"])
def test_round_trip_manifest_first_and_every_member_verified(tmp_path, compress):
    bundle = _bundle(tmp_path, compress=compress)
    assert not (tmp_path / "b.tar.partial").exists()
    manifest, bundle_id = read_manifest(bundle)
    assert manifest.aiboxctl_version and manifest.created.endswith("Z")
    assert manifest.target == HERE and manifest.compress == compress
    paths = [m.path for m in manifest.members]
    assert paths == ["install.sh", "SHA256SUMS", "plan.json", "wheels/example-1.0-py3-none-any.whl",
                     "models/tiny.gguf"]
    model = manifest.member("models/tiny.gguf")
    assert model.size == len(MODEL_BYTES)
    import hashlib

    assert model.sha256 == hashlib.sha256(MODEL_BYTES).hexdigest()
    assert len(bundle_id) == 64

    store, scratch = _dirs(tmp_path)
    checked = check_bundle(bundle, needs=space_needed(manifest, store=store, scratch=scratch))
    assert checked.members == 5 and checked.bundle_id == bundle_id
    assert _nothing_written(tmp_path), "checking must not write anything"
    done = unpack(checked, store=store, scratch=scratch, install_wheels=False)
    assert done.model_path == store / "local" / "tiny" / "tiny.gguf"
    assert done.model_path.read_bytes() == MODEL_BYTES
    from aiboxctl.hub.store import ModelStore

    found = ModelStore(store).find("tiny", "Q4_1")
    assert found is not None and found.path == done.model_path and found.sha256 == model.sha256
    assert done.plan == {"variant": "tiny"}
    sums = (done.scratch / "SHA256SUMS").read_text()
    assert f"{model.sha256}  models/tiny.gguf\n" in sums
    assert not list(store.rglob("*.incomplete"))
    done.cleanup()
    assert not done.scratch.exists()


def test_plain_bundle_is_a_tar_that_gnu_tar_lists(tmp_path):
    bundle = _bundle(tmp_path)
    with tarfile.open(bundle) as tf:
        names = tf.getnames()
    assert names[0] == MANIFEST_NAME and names[-1] == "models/tiny.gguf"


def test_modified_member_is_refused_by_name(tmp_path):
    bundle = _bundle(tmp_path)
    raw = bytearray(bundle.read_bytes())
    at = raw.index(b"MODEL-TAIL")
    raw[at] ^= 0xFF
    bundle.write_bytes(bytes(raw))
    store, scratch = _dirs(tmp_path)
    with pytest.raises(VerificationFailed) as info:
        check_bundle(bundle, needs=space_needed(read_manifest(bundle)[0], store=store, scratch=scratch))
    assert "models/tiny.gguf" in info.value.message and "modified" in info.value.message
    assert info.value.exit_code == ExitCode.VERIFICATION_FAILED
    assert _nothing_written(tmp_path)


def test_modified_member_found_while_unpacking_leaves_nothing_behind(tmp_path):
    """A bundle that changes between the check and the unpack is still caught."""
    bundle = _bundle(tmp_path)
    store, scratch = _dirs(tmp_path)
    checked = check_bundle(bundle)
    raw = bytearray(bundle.read_bytes())
    raw[raw.index(b"MODEL-TAIL")] ^= 0xFF
    bundle.write_bytes(bytes(raw))
    with pytest.raises(VerificationFailed, match="models/tiny.gguf"):
        unpack(checked, store=store, scratch=scratch, install_wheels=False)
    assert _nothing_written(tmp_path)


@pytest.mark.parametrize("compress", ["none", "zstd"])
@pytest.mark.parametrize("keep", [0.5, 0.05])
def test_truncated_bundle_is_a_clear_error(tmp_path, compress, keep):
    bundle = _bundle(tmp_path, compress=compress)
    raw = bundle.read_bytes()
    bundle.write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises(VerificationFailed) as info:
        check_bundle(bundle)
    assert info.value.code == "bundle_truncated"
    assert "truncated" in info.value.message and bundle.name in info.value.message


def test_bundle_cut_at_a_member_boundary_is_truncated(tmp_path):
    """A cut exactly between members reads as a clean end of archive: the manifest catches it."""
    bundle = _bundle(tmp_path)
    with tarfile.open(bundle) as tf:
        last = tf.getmembers()[-1]
    bundle.write_bytes(bundle.read_bytes()[: last.offset])
    with pytest.raises(VerificationFailed, match="models/tiny.gguf") as info:
        check_bundle(bundle)
    assert info.value.code == "bundle_truncated"


def test_empty_file_and_not_a_bundle(tmp_path):
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")
    with pytest.raises(VerificationFailed, match="truncated"):
        check_bundle(empty)
    other = tmp_path / "other.tar"
    with tarfile.open(other, "w") as tf:
        info = tarfile.TarInfo("README")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(VerificationFailed, match="not an aiboxctl bundle"):
        check_bundle(other)


@pytest.mark.parametrize("target, words", [
    (TargetPlatform(python="3.11", platform="manylinux_2_28_aarch64"), "manylinux_2_28_aarch64"),
    (TargetPlatform(python="3.9" if sys.version_info[:2] != (3, 9) else "3.12",
                    platform=HERE.platform), "CPython 3."),
])
def test_bundle_for_another_machine_says_what_it_is_for(tmp_path, target, words):
    bundle = _bundle(tmp_path, target=target)
    with pytest.raises(BundleError) as info:
        check_bundle(bundle)
    msg = info.value.message
    assert info.value.code == "bundle_wrong_target"
    assert msg.startswith(f"bundle is for {target.describe()}") and words in msg
    assert "this machine runs" in msg


def _evil_bundle(tmp_path: Path, add) -> Path:
    """A bundle with a valid manifest first, then whatever ``add`` puts in."""
    good = _bundle(tmp_path, name="good.tar")
    manifest, _ = read_manifest(good)
    raw = manifest.to_bytes()
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo(MANIFEST_NAME)
        info.size = len(raw)
        tf.addfile(info, io.BytesIO(raw))
        add(tf)
    return evil


def test_path_traversal_member_is_refused(tmp_path):
    def add(tf):
        info = tarfile.TarInfo("../etc/passwd")
        info.size = 5
        tf.addfile(info, io.BytesIO(b"root\n"))

    evil = _evil_bundle(tmp_path, add)
    with pytest.raises(VerificationFailed) as info:
        check_bundle(evil)
    assert info.value.code == "bundle_unsafe_member" and "../etc/passwd" in info.value.message


def test_absolute_member_is_refused(tmp_path):
    def add(tf):
        info = tarfile.TarInfo("/tmp/aibox-evil-absolute")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))

    with pytest.raises(VerificationFailed, match="aibox-evil-absolute"):
        check_bundle(_evil_bundle(tmp_path, add))
    assert not Path("/tmp/aibox-evil-absolute").exists()


@pytest.mark.parametrize("target", ["/etc/passwd", "../../../etc/passwd"])
def test_symlink_pointing_outside_is_refused(tmp_path, target):
    def add(tf):
        info = tarfile.TarInfo("wheels/evil.whl")
        info.type = tarfile.SYMTYPE
        info.linkname = target
        tf.addfile(info)

    with pytest.raises(VerificationFailed) as info:
        check_bundle(_evil_bundle(tmp_path, add))
    assert info.value.code == "bundle_unsafe_member" and "wheels/evil.whl" in info.value.message


def test_manifest_naming_a_path_outside_is_refused(tmp_path):
    raw = json.loads(read_manifest(_bundle(tmp_path))[0].to_bytes())
    raw["members"][0]["path"] = "../etc/passwd"
    with pytest.raises(VerificationFailed, match="outside the bundle"):
        BundleManifest.from_bytes(json.dumps(raw).encode())


def test_unlisted_member_is_refused(tmp_path):
    def add(tf):
        info = tarfile.TarInfo("extra.sh")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"rm\n"))

    with pytest.raises(VerificationFailed, match="extra.sh.*not listed"):
        check_bundle(_evil_bundle(tmp_path, add))


def test_not_enough_disk_is_refused_before_extracting(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    bundle = _bundle(tmp_path)
    manifest, _ = read_manifest(bundle)
    store, scratch = _dirs(tmp_path)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 << 30, 10 << 30, 1 << 20))
    scanned = []
    monkeypatch.setattr("aiboxctl.bundle.unpack.scan_bundle", lambda *a, **k: scanned.append(a))
    with pytest.raises(BundleError) as info:
        check_bundle(bundle, needs=space_needed(manifest, store=store, scratch=scratch))
    assert info.value.code == "insufficient_disk" and "not enough disk space" in info.value.message
    assert scanned == [] and _nothing_written(tmp_path)


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")  # a half-written tar left open
def test_pack_refuses_weights_that_do_not_match_their_checksum(tmp_path):
    entries = _entries(tmp_path)
    entries[-1] = Entry("models/tiny.gguf", source=entries[-1].source, expected_sha256="0" * 64)
    with pytest.raises(VerificationFailed, match="tiny.gguf"):
        write_bundle(tmp_path / "x.tar", entries, target=HERE)
    assert not (tmp_path / "x.tar").exists() and not (tmp_path / "x.tar.partial").exists()


def test_pack_refuses_when_the_output_disk_is_too_small(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 30, 1 << 30, 4096))
    with pytest.raises(BundleError, match="not enough disk space"):
        write_bundle(tmp_path / "x.tar", _entries(tmp_path), target=HERE)
    assert not (tmp_path / "x.tar.partial").exists()


def test_scan_refuses_a_second_copy_of_a_member(tmp_path):
    manifest, _ = read_manifest(_bundle(tmp_path, name="good.tar"))
    plan = manifest.member("plan.json")

    def add(tf):
        for _ in range(2):
            data = json.dumps({"variant": "tiny"}).encode()
            info = tarfile.TarInfo("plan.json")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))

    assert plan is not None
    with pytest.raises(VerificationFailed, match="twice"):
        scan_bundle(_evil_bundle(tmp_path, add), manifest)


def test_cli_install_bundle_for_another_machine_exits_1_naming_the_target(tmp_path, cli):
    target = TargetPlatform(python="3.11", platform="manylinux_2_28_aarch64")
    bundle = _bundle(tmp_path, target=target)
    r = cli("install", "--bundle", str(bundle), "--root", str(tmp_path / "root"), "--yes", "--json")
    assert r.code == 1
    err = r.json()["errors"][0]
    assert err["code"] == "bundle_wrong_target" and "manylinux_2_28_aarch64" in err["message"]
    assert not (tmp_path / "root").exists()


def test_cli_install_bundle_traversal_is_one_line_exit_4(tmp_path, cli_proc):
    def add(tf):
        info = tarfile.TarInfo("../etc/passwd")
        info.size = 5
        tf.addfile(info, io.BytesIO(b"root\n"))

    evil = _evil_bundle(tmp_path, add)
    r = cli_proc("install", "--bundle", str(evil), "--root", str(tmp_path / "root"), "--yes",
                 env={"AIBOX_HOME": str(tmp_path / "home")})
    assert r.code == 4 and r.stdout == ""
    errors = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: bundle member '../etc/passwd'"), r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "home" / "models").exists()


def test_cli_install_bundle_rejects_profile_with_bundle(tmp_path, cli):
    r = cli("install", "--bundle", str(tmp_path / "x.tar"), "--profile", "demo", "--json")
    assert r.code == 2 and "--bundle" in r.json()["errors"][0]["message"]


def test_pip_platforms_cover_older_manylinux_and_local_builds():
    tags = TargetPlatform(python="3.11", platform="manylinux_2_28_x86_64").pip_platforms()
    assert tags[0] == "manylinux_2_28_x86_64"
    for t in ("manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64", "linux_x86_64"):
        assert t in tags
    assert not any("aarch64" in t for t in tags)
    assert TargetPlatform(python="3.11", platform="manylinux2014_aarch64").arch == "aarch64"


def _engine_wheel(folder: Path, variants: list[str], version: str = "0.3.36", plat: str = "linux_x86_64") -> Path:
    import zipfile

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"llama_cpp_python-{version}-py3-none-{plat}.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("llama_cpp/__init__.py", "")
        for v in variants:
            zf.writestr(f"bin/libggml-cpu-{v}.so", b"\x7fELF")
        if not variants:
            zf.writestr("llama_cpp/lib/libggml-cpu.so", b"\x7fELF")
    return path


def test_engine_wheel_prefers_the_portable_build_from_the_engine_cache(tmp_path, _isolated_state):
    from aiboxctl.bundle.wheels import describe_engine_wheel, find_engine_wheel, required_engine_version

    version = required_engine_version()
    target = TargetPlatform(python="3.11", platform="manylinux_2_28_x86_64")
    cache = _isolated_state / "cache" / "wheels" / "llama-cpp-python"
    _engine_wheel(cache / version / "cpu-portable", ["x64", "haswell", "sapphirerapids"], version)
    _engine_wheel(cache / version / "snapshot-abc", [], version)
    _engine_wheel(cache / version / "cpu-portable-arm", ["armv8"], version, plat="linux_aarch64")
    chosen = find_engine_wheel(target)
    assert chosen.build == "portable" and chosen.cpu_variants == ("haswell", "sapphirerapids", "x64")
    assert chosen.path.parent.name == "cpu-portable"
    native = describe_engine_wheel(_engine_wheel(tmp_path / "n", [], version), "given")
    assert native.build == "native" and native.cpu_variants == ()


def test_engine_wheel_for_a_gpu_target_must_be_built_first(_isolated_state):
    from aiboxctl.bundle.wheels import WheelError, find_engine_wheel, target_engine_key
    from aiboxctl.sizing.hardware_profiles import load_hardware_profile

    key, why = target_engine_key(load_hardware_profile("rtx4090").accelerators)
    assert key.startswith("cuda") and "4090" in why
    with pytest.raises(WheelError) as info:
        find_engine_wheel(TargetPlatform(python="3.11", platform="manylinux_2_28_x86_64"), key=key)
    assert info.value.code == "engine_wheel_missing" and "engine install --backend cuda" in info.value.hint


def test_install_sh_checks_python_arch_and_wheels_before_pip(tmp_path):
    from aiboxctl.bundle.pack import render_install_sh

    target = TargetPlatform(python="3.11", platform="manylinux_2_28_aarch64")
    text = render_install_sh(target=target, profile="demo\n; rm -rf /", model="m", compress="zstd",
                             created="2026-01-01T00:00:00Z").decode()
    # Profile and model names land in one comment line only: a newline cannot start a command.
    assert [ln for ln in text.splitlines() if "rm -rf /" in ln] == [
        ln for ln in text.splitlines() if ln.startswith("# Bundle: profile demo?")]
    assert '[ "$have" = "3.11" ]' in text and '[ "$arch" = "aarch64" ]' in text
    assert "command -v zstd" in text and '"aiboxctl[zstd]==' in text
    # The order that matters: checks, then checksums, then pip (offline), then aiboxctl.
    order = [text.index(s) for s in ("sha256sum -c", "--no-index", "exec \"$VENV/bin/aiboxctl\" install --bundle")]
    assert order == sorted(order)


def test_unpacking_again_verifies_but_does_not_rewrite_the_stored_weights(tmp_path):
    bundle = _bundle(tmp_path)
    store, scratch = _dirs(tmp_path)
    first = unpack(check_bundle(bundle), store=store, scratch=scratch, install_wheels=False)
    inode = first.model_path.stat().st_ino
    from aiboxctl.bundle.unpack import model_in_store

    manifest, bundle_id = read_manifest(bundle)
    assert model_in_store(manifest, store, bundle_id)
    assert space_needed(manifest, store=store, scratch=scratch, model_present=True)[store] == 0
    again = unpack(check_bundle(bundle), store=store, scratch=scratch, install_wheels=False)
    assert again.model_path == first.model_path and again.model_path.stat().st_ino == inode
    assert again.model_path.read_bytes() == MODEL_BYTES


def test_split_model_shards_all_go_to_the_store(tmp_path):
    """A split GGUF travels as one member per shard and is filed shard by shard."""
    shards = []
    for i in (1, 2):
        f = tmp_path / "src" / f"big-0000{i}-of-00002.gguf"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(f"shard {i} ".encode() * 1000)
        shards.append(f)
    entries = [Entry("install.sh", data=b"#!/bin/sh\n", mode=0o755),
               *(Entry(f"models/{f.name}", source=f) for f in shards)]
    out = tmp_path / "split.tar"
    write_bundle(out, entries, target=HERE, profile="demo", model={
        "variant": "big", "quant": "Q4_K_M", "repo": "owner/big-GGUF", "source": "hf",
        "path": f"models/{shards[0].name}", "file": shards[0].name,
        "files": [{"path": f"models/{f.name}", "file": f.name, "shard": i, "shards": 2}
                  for i, f in enumerate(shards, 1)]})
    store, scratch = _dirs(tmp_path)
    manifest, _ = read_manifest(out)
    assert space_needed(manifest, store=store, scratch=scratch)[store] == sum(f.stat().st_size for f in shards)
    done = unpack(check_bundle(out), store=store, scratch=scratch, install_wheels=False)
    from aiboxctl.hub.store import ModelStore

    records = sorted(ModelStore(store).find_all("big", "Q4_K_M"), key=lambda r: r.shard)
    assert [(r.shard, r.shards, r.source) for r in records] == [(1, 2, "hf"), (2, 2, "hf")]
    assert done.model_path == records[0].path == store / "owner" / "big-GGUF" / shards[0].name
    assert [r.path.read_bytes() for r in records] == [f.read_bytes() for f in shards]
