"""The file transaction under an install prefix: diff, atomic writes, rollback, manifest, generations."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from aiboxctl.deploy import manifest as mf
from aiboxctl.deploy.render import RenderedFile
from aiboxctl.deploy.transaction import InjectedFailure, Transaction, entries_for, journal_path, plan_changes
from aiboxctl.paths import InstallLayout


def files_under(root: Path) -> dict[str, tuple[bytes, int]]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
        else:
            out[str(p.relative_to(root)) + "/"] = (b"", 0)
    return out


def rendered(root: Path, version: str) -> tuple[RenderedFile, ...]:
    return (
        RenderedFile(str(root / "etc/aibox/engine.yaml"), f"model: a\nversion: {version}\n".encode(), 0o640),
        RenderedFile(str(root / "etc/aibox/api_keys"), b"admin:sk-secret\n", 0o600, secret=True),
        RenderedFile(str(root / "etc/logrotate.d/aibox"), b"/var/log/aibox/*.log {}\n", 0o644),
    )


def apply(files, previous=None, fail_after=None, monkeypatch=None):
    tx = Transaction()
    for change, f in zip(plan_changes(files, previous), files):
        if change.changed:
            tx.write(f)
    return tx


def test_plan_changes_create_modify_unchanged_remove(tmp_path):
    files = rendered(tmp_path, "1")
    changes = plan_changes(files, None)
    assert [c.action for c in changes] == ["create"] * 3
    assert "+version: 1" in changes[0].diff
    assert "sk-secret" not in changes[1].diff  # secrets never appear in a diff
    apply(files).commit()
    assert [c.action for c in plan_changes(files, None)] == ["unchanged"] * 3
    os.chmod(files[1].path, 0o644)
    assert [c.action for c in plan_changes(files, None)] == ["unchanged", "chmod", "unchanged"]
    new = rendered(tmp_path, "2")
    manifest = mf.InstallManifest(1, "0", str(tmp_path), "demo", "m", entries_for(files))
    changes = plan_changes(new[:1], manifest)
    assert [(Path(c.path).name, c.action) for c in changes] == [("engine.yaml", "modify"), ("api_keys", "remove"),
                                                               ("aibox", "remove")]
    assert "-version: 1\n+version: 2" in changes[0].diff


def test_rollback_restores_bytes_modes_and_removes_created_dirs(tmp_path):
    first = rendered(tmp_path, "1")
    apply(first).commit()
    (tmp_path / "etc/aibox/unrelated").write_text("keep me")
    before = files_under(tmp_path)
    second = (*rendered(tmp_path, "2"), RenderedFile(str(tmp_path / "new/dir/file"), b"x", 0o600))
    tx = Transaction()
    for f in second:
        tx.write(f)
    tx.remove(first[2].path)
    assert files_under(tmp_path) != before
    assert tx.rollback() == []
    assert files_under(tmp_path) == before
    assert not (tmp_path / "new").exists()


def test_injected_failure_after_n_files(tmp_path, monkeypatch):
    monkeypatch.setenv("AIBOX_INJECT_FAILURE", "after-file:2")
    tx = Transaction()
    files = rendered(tmp_path, "1")
    with pytest.raises(InjectedFailure):
        for f in files:
            tx.write(f)
    assert tx.files_written == 2
    tx.rollback()
    assert not (tmp_path / "etc").exists()


def test_secret_is_written_with_its_mode(tmp_path):
    files = rendered(tmp_path, "1")
    apply(files).commit()
    assert stat.S_IMODE(Path(files[1].path).stat().st_mode) == 0o600
    entries = entries_for(files)
    assert entries[1].mode == "0600" and entries[1].secret
    assert entries[0].sha256 == mf.sha256_bytes(files[0].content)


def test_manifest_round_trip_and_generations(tmp_path):
    layout = InstallLayout.for_root(tmp_path)
    assert mf.load_manifest(layout) is None
    from aiboxctl.deploy.install import _commit

    files = rendered(tmp_path, "1")
    apply(files).commit()
    m = mf.InstallManifest(1, "0.1.0", str(tmp_path), "demo", "smollm2", entries_for(files),
                           directories=(str(tmp_path / "etc"),), services_enabled=({"manager": "supervisor", "name": "aibox.service"},),
                           spec={"x": 1}, inputs_fingerprint="abc", model_path="/m.gguf")
    tx = Transaction(journal_path(layout))
    tx.begin()
    _commit(layout, tx, files, m)
    tx.commit()
    assert not journal_path(layout).exists()
    assert mf.load_manifest(layout) == m
    assert mf.list_generations(layout) == [1]
    old, contents = mf.load_generation(layout, 1)
    assert old == m and contents[files[0].path] == files[0].content
    with pytest.raises(Exception, match="no aibox installation"):
        mf.require_manifest(InstallLayout.for_root(tmp_path / "elsewhere"))


def test_default_install_prefix_is_root_for_root_and_a_user_dir_otherwise(monkeypatch, _isolated_state):
    from aiboxctl.deploy.spec import install_layout

    monkeypatch.setattr("os.geteuid", lambda: 0)
    assert str(install_layout(None).root) == "/"
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert install_layout(None).root == (_isolated_state / "appliance").resolve()
    assert str(install_layout("/x/y").root) == "/x/y"


def test_service_user_access_check_reads_mode_bits(tmp_path):
    import shutil
    import tempfile

    from aiboxctl.deploy.users import user_can as _user_can

    base = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        base.chmod(0o755)
        private = base / "private"
        private.mkdir(mode=0o700)
        (private / "model.gguf").write_bytes(b"x")
        public = base / "public"
        public.mkdir(mode=0o755)
        (public / "model.gguf").write_bytes(b"x")
        (public / "model.gguf").chmod(0o644)
        # "nobody" is neither owner nor in the group: the "other" bits decide, on every parent too
        assert _user_can("nobody", public / "model.gguf", "r")
        assert not _user_can("nobody", private / "model.gguf", "r")
        assert _user_can("root", private / "model.gguf", "r")
        # pytest's own tmp dirs sit under a 0700 parent: refused however open the file is
        (tmp_path / "m").write_bytes(b"x")
        (tmp_path / "m").chmod(0o644)
        assert not _user_can("nobody", tmp_path / "m", "r")
    finally:
        shutil.rmtree(base)


def test_one_install_at_a_time_per_prefix(tmp_path):
    from aiboxctl.deploy.recovery import install_lock
    from aiboxctl.errors import AiboxError

    layout = InstallLayout.for_root(tmp_path)
    with install_lock(layout):
        with pytest.raises(AiboxError, match="another install"):
            with install_lock(layout):
                pass
        with install_lock(InstallLayout.for_root(tmp_path / "other")):
            pass
    with install_lock(layout):
        pass


_CRASHING_WRITER = """
import os, signal, sys
from pathlib import Path
from aiboxctl.deploy.render import RenderedFile
from aiboxctl.deploy.transaction import Transaction, journal_path
from aiboxctl.paths import InstallLayout
root = Path(sys.argv[1])
layout = InstallLayout.for_root(root)
tx = Transaction(journal_path(layout), {"operation": "install"})
tx.begin()
tx.mark("writing files")
tx.write(RenderedFile(str(root / "etc/aibox/engine.yaml"), b"model: b\\n", 0o640))
tx.write(RenderedFile(str(root / "etc/aibox/new"), b"new\\n", 0o600))
tx.add_service({"manager": "supervisor", "was_active": False, "previous_installed": True})
tx.write(RenderedFile(str(layout.manifest), b"{}", 0o644))
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_transaction_leaves_a_journal_that_undoes_it(tmp_path):
    """The write-ahead journal: SIGKILL after some writes, then status sees it and the journal
    alone puts every byte, mode and directory back."""
    import subprocess
    import sys

    from aiboxctl.deploy.transaction import InstallInterrupted, check_not_interrupted

    layout = InstallLayout.for_root(tmp_path / "root")
    first = RenderedFile(str(layout.etc / "engine.yaml"), b"model: a\n", 0o644)
    Transaction().write(first)
    before = files_under(tmp_path)
    proc = subprocess.run([sys.executable, "-c", _CRASHING_WRITER, str(layout.root)], capture_output=True)
    assert proc.returncode == -9, proc.stderr
    assert (layout.etc / "engine.yaml").read_bytes() == b"model: b\n" and layout.manifest.exists()
    with pytest.raises(InstallInterrupted, match=r"install incomplete \(interrupted while writing files\)") as err:
        check_not_interrupted(layout)
    assert err.value.exit_code == 5 and "aiboxctl uninstall --root" in err.value.hint
    tx = Transaction.load(journal_path(layout))
    assert not tx.owner_alive() and tx.services == [{"manager": "supervisor", "was_active": False,
                                                     "previous_installed": True}]
    assert tx.rollback() == []
    assert files_under(tmp_path) == before  # journal, manifest, new file and new dirs gone; bytes and mode back
    check_not_interrupted(layout)
    assert Transaction.load(journal_path(layout)) is None
