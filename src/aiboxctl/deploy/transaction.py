"""Write an installation's files as one transaction: diff first, journal every change, undo on failure.

Each write is atomic (temp file + rename in the same directory). The transaction keeps the
previous bytes, mode and owner of every path it touches, the directories it created, and the users
and services the install added, so that :meth:`Transaction.rollback` puts the tree back exactly as
it was.

With a journal file (``var/lib/aibox/install-journal.json`` of the prefix) that record is also on
disk, written ahead of each change (fsync'd, atomic rename): an installer killed at any instant
leaves the journal behind, ``status`` reports the install as interrupted, and
:meth:`Transaction.load` + :meth:`rollback` undo it later (``uninstall``, or the next ``install``).
Removing the journal is the commit point.
"""

from __future__ import annotations

import base64
import difflib
import errno
import json
import os
import pwd
import grp
import shutil
import signal
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from collections.abc import Iterable, Sequence
from typing import Any

from aiboxctl.deploy.manifest import FileEntry, InstallManifest, owner_names, sha256_bytes
from aiboxctl.deploy.render import RenderedFile
from aiboxctl.deploy.spec import root_flag
from aiboxctl.env import Env
from aiboxctl.errors import AiboxError, ServiceDown
from aiboxctl.paths import InstallLayout

JOURNAL_VERSION = 1


class InjectedFailure(AiboxError):
    """Raised at a named point when AIBOX_INJECT_FAILURE asks for it (tests of the rollback)."""

    code = "injected_failure"


class InstallInterrupted(ServiceDown):
    """An install, upgrade or rollback was killed before it committed (its journal is left)."""

    code = "install_interrupted"


def maybe_fail(point: str) -> None:
    """The failure-injection seam: ``AIBOX_INJECT_FAILURE=<point>`` makes the install fail there;
    ``AIBOX_TEST_KILL_AT=<point>`` kills the installer there with SIGKILL (a crash: no rollback),
    ``<point>@SIGINT`` sends it that signal instead (Ctrl-C).
    Points: ``journal`` (journal written, nothing else yet), ``after-file:N`` (after N files
    written), ``before-start``, ``after-start``, ``smoke``, ``commit`` (manifest written, journal
    not yet removed)."""
    kill_at, _, signame = os.environ.get(Env.TEST_KILL_AT, "").partition("@")  # "point@SIGINT": Ctrl-C there
    if kill_at == point:
        os.kill(os.getpid(), getattr(signal, signame or "SIGKILL"))
    wanted = os.environ.get(Env.INJECT_FAILURE, "")
    if wanted and wanted == point:
        raise InjectedFailure(f"injected failure at {point} ({Env.INJECT_FAILURE})")


def journal_path(layout: InstallLayout) -> Path:
    return layout.state / "install-journal.json"


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (tells a live installer from a reused pid)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def check_not_interrupted(layout: InstallLayout) -> None:
    """Raise when the prefix holds the journal of an install that has not committed: one still
    running, or one that was killed (then ``uninstall`` or a re-run of ``install`` repairs it)."""
    tx = Transaction.load(journal_path(layout))
    if tx is None:
        return
    root = root_flag(layout)
    op = tx.meta.get("operation", "install")
    if tx.owner_alive():
        raise ServiceDown(f"an {op} is in progress under {layout.root} (pid {tx.meta.get('pid')}, {tx.step})",
                          code="install_in_progress", hint=f"wait for it to finish, then: aiboxctl status{root}")
    raise InstallInterrupted(
        f"{op} incomplete (interrupted while {tx.step}) under {layout.root}",
        hint=f"re-run the {op} to repair it, or remove what it wrote: aiboxctl uninstall{root}")


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
    :meth:`ensure_dir`, then either :meth:`commit` or :meth:`rollback`.

    ``journal``: where to keep the write-ahead record on disk (None: in memory only). ``meta`` is
    kept in it for whoever finds it later (operation, profile)."""

    def __init__(self, journal: Path | None = None, meta: dict[str, Any] | None = None) -> None:
        self._undo: list[_Undo] = []
        self._dirs: list[Path] = []
        self._trees: list[Path] = []
        self.users: list[str] = []  # created by this transaction (the caller deletes them on rollback)
        self.services: list[dict[str, Any]] = []  # started or restarted by it (the caller undoes them)
        self.files_written = 0
        self.journal = Path(journal) if journal is not None else None
        self.meta: dict[str, Any] = dict(meta or {})
        self.step = "starting"

    # --- the journal ------------------------------------------------------------------------

    def begin(self, dir_mode: int = 0o750) -> None:
        """Create the journal's directory (recorded as created) and write the journal: call it
        before the first side effect of the install."""
        if self.journal is None:
            return
        pid = os.getpid()
        self.meta.update(pid=pid, pid_start=_start_time(pid), started_at=time.time())
        self.ensure_dir(self.journal.parent.parent, 0o755, _save=False)
        self.ensure_dir(self.journal.parent, dir_mode, _save=False)
        self._save()
        maybe_fail("journal")

    def mark(self, step: str) -> None:
        """What the transaction is doing now (shown by ``status`` if it is interrupted here)."""
        self.step = step
        self._save()

    def _save(self) -> None:
        if self.journal is None:
            return
        doc = {
            "journal_version": JOURNAL_VERSION, "meta": self.meta, "step": self.step,
            "dirs": [str(d) for d in self._dirs], "trees": [str(t) for t in self._trees],
            "undo": [{**asdict(u), "content": base64.b64encode(u.content).decode()} for u in self._undo],
            "users": self.users, "services": self.services,
        }
        # 0600: it holds the previous bytes of the API key file.
        _atomic_write(self.journal, json.dumps(doc).encode(), 0o600)

    @classmethod
    def load(cls, journal: Path) -> "Transaction | None":
        """The transaction a journal on disk describes (None when there is none)."""
        try:
            doc = json.loads(Path(journal).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise AiboxError(f"install journal {journal} is unreadable: {exc}", code="journal_corrupt",
                             hint=f"inspect it, then remove it by hand: rm {journal}") from exc
        if doc.get("journal_version") != JOURNAL_VERSION:
            raise AiboxError(f"install journal {journal} has version {doc.get('journal_version')}, "
                             "not one this aiboxctl reads", code="journal_version")
        tx = cls(journal, doc.get("meta"))
        tx.step = doc.get("step", "?")
        tx._dirs = [Path(d) for d in doc.get("dirs", ())]
        tx._trees = [Path(t) for t in doc.get("trees", ())]
        tx._undo = [_Undo(**{**u, "content": base64.b64decode(u["content"])}) for u in doc.get("undo", ())]
        tx.users = list(doc.get("users", ()))
        tx.services = list(doc.get("services", ()))
        return tx

    def owner_alive(self) -> bool:
        """Is the process that wrote this journal still running (so not interrupted)?"""
        pid = self.meta.get("pid")
        return bool(pid) and pid != os.getpid() and _start_time(int(pid)) == self.meta.get("pid_start")

    def add_user(self, user: str) -> None:
        """Record (ahead of ``useradd``) a user this transaction creates."""
        self.users.append(user)
        self._save()

    def add_service(self, record: dict[str, Any]) -> None:
        """Record (ahead of starting or restarting it) a service this transaction touches."""
        self.services.append(dict(record))
        self._save()

    def new_tree(self, path: Path) -> None:
        """Create a directory whose whole content goes on rollback (a generation copy)."""
        p = Path(path)
        top = p
        while not top.parent.exists():
            top = top.parent
        if p.exists():
            shutil.rmtree(p)  # left by an earlier failed commit: nothing refers to it
        self._trees.append(top)
        self._save()
        p.mkdir(parents=True)

    # --- changes ------------------------------------------------------------------------------

    def ensure_dir(self, path: Path, mode: int = 0o755, owner: str | None = None, group: str | None = None,
                   *, _save: bool = True) -> None:
        missing = []
        p = Path(path)
        while not p.exists():
            missing.append(p)
            p = p.parent
        if missing:
            self._dirs.extend(reversed(missing))
            if _save:
                self._save()
        for d in reversed(missing):
            d.mkdir(mode=mode)
            os.chmod(d, mode)
        if owner or group:
            # What it creates now, or made earlier (the journal's directory, before the
            # service user existed); never a directory that was there before.
            made = list(reversed(missing)) or [p for p in (Path(path),) if p in self._dirs]
            for d in made:
                os.chmod(d, mode)
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
        else:
            self._undo.append(_Undo(str(path), True, path.read_bytes(), st.st_mode & 0o7777, st.st_uid, st.st_gid))
        self._save()

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
        """Undo the file changes in reverse order (users and services are the caller's: see
        :attr:`users`, :attr:`services`); returns the problems met (never raises). Safe to
        repeat: the journal goes last, so a rollback cut short is finished by the next one."""
        problems = []
        for undo in reversed(self._undo):
            try:
                if undo.existed:
                    _atomic_write(Path(undo.path), undo.content, undo.mode, undo.uid, undo.gid)
                else:
                    Path(undo.path).unlink(missing_ok=True)
            except OSError as exc:
                problems.append(f"{undo.path}: {exc}")
        for tree in reversed(self._trees):
            shutil.rmtree(tree, ignore_errors=True)
        if self.journal is not None:
            self._remove_dirs(problems, keep=self.journal.parent)
            self.journal.unlink(missing_ok=True)
        self._remove_dirs(problems)
        self._undo.clear()
        self._dirs.clear()
        self._trees.clear()
        return problems

    def _remove_dirs(self, problems: list[str], keep: Path | None = None) -> None:
        for d in reversed(self._dirs):
            if keep is not None and (d == keep or d in keep.parents):
                continue
            try:
                d.rmdir()
            except FileNotFoundError:
                pass  # recorded ahead of a mkdir that never ran, or removed by an earlier try
            except OSError as exc:
                # A directory the failed attempt wrote into (the service's log) stays, with
                # what it says about the failure; anything else is a problem to report.
                if exc.errno != errno.ENOTEMPTY:
                    problems.append(f"{d}: {exc}")

    def commit(self) -> None:
        """Keep the changes: forget the undo record and remove the journal (the commit point)."""
        self._undo.clear()
        self._trees.clear()
        if self.journal is not None:
            self.journal.unlink(missing_ok=True)
            _fsync_dir(self.journal.parent)


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
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable (it survives a power cut, not only a kill)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
