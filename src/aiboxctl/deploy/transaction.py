"""Write an installation's files as one transaction: diff first, journal every change, undo on failure.

Each write is atomic (temp file + rename in the same directory). The journal keeps the previous
bytes, mode and owner of every path it touches and the directories it created, so that
:meth:`Transaction.rollback` puts the tree back exactly as it was.
"""

from __future__ import annotations

import difflib
import errno
import os
import pwd
import grp
import tempfile
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterable, Sequence

from aiboxctl.deploy.manifest import FileEntry, InstallManifest, owner_names, sha256_bytes
from aiboxctl.deploy.render import RenderedFile
from aiboxctl.env import Env
from aiboxctl.errors import AiboxError


class InjectedFailure(AiboxError):
    """Raised at a named point when AIBOX_INJECT_FAILURE asks for it (tests of the rollback)."""

    code = "injected_failure"


def maybe_fail(point: str) -> None:
    """The failure-injection seam: ``AIBOX_INJECT_FAILURE=<point>`` makes the install fail there.
    Points: ``after-file:N`` (after N files written), ``before-start``, ``after-start``, ``smoke``."""
    wanted = os.environ.get(Env.INJECT_FAILURE, "")
    if wanted and wanted == point:
        raise InjectedFailure(f"injected failure at {point} ({Env.INJECT_FAILURE})")


@dataclass(frozen=True)
class FileChange:
    path: str
    action: str  # create | modify | chmod | remove | unchanged
    mode: str
    diff: str = ""

    @property
    def changed(self) -> bool:
        return self.action != "unchanged"


def _mode(value: int) -> str:
    return f"{value & 0o7777:04o}"


def _ids(owner: str | None, group: str | None) -> tuple[int, int]:
    uid = pwd.getpwnam(owner).pw_uid if owner else -1
    gid = grp.getgrnam(group).gr_gid if group else -1
    return uid, gid


def _diff(path: str, old: bytes | None, new: bytes | None, secret: bool) -> str:
    if secret:
        return (f"--- {path if old is not None else '/dev/null'}\n+++ {path if new is not None else '/dev/null'}\n"
                "(secret content not shown)\n")
    try:
        a = (old or b"").decode().splitlines(keepends=True)
        b = (new or b"").decode().splitlines(keepends=True)
    except UnicodeDecodeError:
        return f"Binary files {path} differ\n"
    return "".join(difflib.unified_diff(a, b, fromfile=path if old is not None else "/dev/null",
                                        tofile=path if new is not None else "/dev/null"))


def plan_changes(desired: Sequence[RenderedFile], previous: InstallManifest | None) -> tuple[FileChange, ...]:
    """Compare the files an install would write with what is on disk now (not with what the
    manifest claims: a hand-edited file shows up as a change). Files of the previous
    installation that are no longer rendered are removed."""
    changes = []
    wanted = {f.path for f in desired}
    for f in desired:
        path = Path(f.path)
        try:
            st = path.stat()
            old = path.read_bytes()
        except FileNotFoundError:
            changes.append(FileChange(f.path, "create", _mode(f.mode), _diff(f.path, None, f.content, f.secret)))
            continue
        if old != f.content:
            changes.append(FileChange(f.path, "modify", _mode(f.mode), _diff(f.path, old, f.content, f.secret)))
            continue
        owner_ok = True
        if f.owner or f.group:
            user, group = owner_names(st)
            owner_ok = (not f.owner or user == f.owner) and (not f.group or group == f.group)
        if _mode(st.st_mode) != _mode(f.mode) or not owner_ok:
            changes.append(FileChange(f.path, "chmod", _mode(f.mode),
                                      f"{f.path}: mode {_mode(st.st_mode)} -> {_mode(f.mode)}\n"))
        else:
            changes.append(FileChange(f.path, "unchanged", _mode(f.mode)))
    for entry in previous.files if previous else ():
        if entry.path not in wanted and Path(entry.path).exists():
            old = Path(entry.path).read_bytes()
            changes.append(FileChange(entry.path, "remove", entry.mode, _diff(entry.path, old, None, entry.secret)))
    return tuple(changes)


@dataclass
class _Undo:
    path: str
    existed: bool
    content: bytes = b""
    mode: int = 0
    uid: int = -1
    gid: int = -1


class Transaction:
    """Journaled file writes under an install prefix. Use :meth:`write`/:meth:`remove`/
    :meth:`ensure_dir`, then either :meth:`commit` or :meth:`rollback`."""

    def __init__(self) -> None:
        self._undo: list[_Undo] = []
        self._dirs: list[Path] = []
        self.files_written = 0

    def ensure_dir(self, path: Path, mode: int = 0o755, owner: str | None = None, group: str | None = None) -> None:
        missing = []
        p = Path(path)
        while not p.exists():
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            d.mkdir(mode=mode)
            self._dirs.append(d)
            os.chmod(d, mode)
            if owner or group:
                os.chown(d, *_ids(owner, group))

    @property
    def created_dirs(self) -> tuple[str, ...]:
        return tuple(str(d) for d in self._dirs)

    def _remember(self, path: Path) -> None:
        if any(u.path == str(path) for u in self._undo):
            return
        try:
            st = path.stat()
        except FileNotFoundError:
            self._undo.append(_Undo(str(path), False))
            return
        self._undo.append(_Undo(str(path), True, path.read_bytes(), st.st_mode & 0o7777, st.st_uid, st.st_gid))

    def write(self, f: RenderedFile) -> None:
        path = Path(f.path)
        self.ensure_dir(path.parent)
        self._remember(path)
        _atomic_write(path, f.content, f.mode, *_ids(f.owner, f.group))
        self.files_written += 1
        maybe_fail(f"after-file:{self.files_written}")

    def remove(self, path: str | Path) -> None:
        p = Path(path)
        self._remember(p)
        p.unlink(missing_ok=True)

    def rollback(self) -> list[str]:
        """Undo everything in reverse order; returns the problems met (never raises)."""
        problems = []
        for undo in reversed(self._undo):
            try:
                if undo.existed:
                    _atomic_write(Path(undo.path), undo.content, undo.mode, undo.uid, undo.gid)
                else:
                    Path(undo.path).unlink(missing_ok=True)
            except OSError as exc:
                problems.append(f"{undo.path}: {exc}")
        for d in reversed(self._dirs):
            try:
                d.rmdir()
            except OSError as exc:
                # A directory the failed attempt wrote into (the service's log) stays, with
                # what it says about the failure; anything else is a problem to report.
                if exc.errno != errno.ENOTEMPTY:
                    problems.append(f"{d}: {exc}")
        self._undo.clear()
        self._dirs.clear()
        return problems

    def commit(self) -> None:
        self._undo.clear()


def _atomic_write(path: Path, data: bytes, mode: int, uid: int = -1, gid: int = -1) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        # Mode and owner are set before the bytes land, so a secret is never readable by others.
        os.fchmod(fd, mode)
        if uid != -1 or gid != -1:
            os.fchown(fd, uid, gid)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def entries_for(files: Iterable[RenderedFile]) -> tuple[FileEntry, ...]:
    """Manifest entries from what is on disk now (after the writes)."""
    out = []
    for f in files:
        st = Path(f.path).stat()
        user, group = owner_names(st)
        out.append(FileEntry(path=f.path, mode=_mode(st.st_mode), owner=user, group=group,
                             sha256=sha256_bytes(Path(f.path).read_bytes()), secret=f.secret))
    return tuple(out)


def write_plain(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write a bookkeeping file (manifest, generation copy) atomically, outside any journal."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, data, mode)
