"""One install at a time per prefix, and undoing one that was killed before it committed (its
write-ahead journal is still there): what ``install``, ``uninstall`` and the lifecycle commands
run before they touch anything."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from aiboxctl.deploy import manifest as mf
from aiboxctl.deploy.services import manager_for, service_for
from aiboxctl.deploy.spec import InstallSpec
from aiboxctl.deploy.transaction import Transaction, journal_path
from aiboxctl.deploy.users import user_exists
from aiboxctl.errors import AiboxError
from aiboxctl.paths import InstallLayout, StatePaths
from aiboxctl.system import run_command

Progress = Callable[[str], None]


def _noop(_: str) -> None:
    pass


@dataclass(frozen=True)
class Recovery:
    """What undoing an interrupted install did."""

    step: str  # where it was interrupted
    removed_files: tuple[str, ...]
    restored_files: tuple[str, ...]
    removed_users: tuple[str, ...]
    service_stopped: bool
    problems: tuple[str, ...]


def undo(layout: InstallLayout, tx: Transaction) -> tuple[list[str], bool]:
    """Undo a transaction's services, files and users, in that order; returns (problems, whether
    a service was stopped). The services it started or restarted are stopped first (the engine
    of the new files must not keep serving); the previous one runs again when it ran before."""
    problems: list[str] = []
    stopped = False
    for record in reversed(tx.services):
        try:
            svc = manager_for(record["manager"], layout)
            stopped = svc.stop() or stopped
            if not record.get("previous_installed"):
                svc.disable()
        except Exception as exc:  # noqa: BLE001 - report, keep undoing
            problems.append(f"service: {exc}")
    problems += tx.rollback()
    for user in reversed(tx.users):
        r = run_command(["userdel", user], timeout=30)
        if not r.ok and user_exists(user):
            problems.append(f"user {user}: {r.failure_reason()}")
    previous = mf.load_manifest(layout) if any(r.get("was_active") for r in tx.services) else None
    if previous is not None and previous.spec:
        # The previous generation's files are back: run them again, as they ran before.
        try:
            prev = service_for(InstallSpec.from_dict(previous.spec))
            if prev.name == "systemd":
                prev.reload()
            prev.enable_start() if prev.name == "supervisor" else prev.restart()
        except Exception as exc:  # noqa: BLE001
            problems.append(f"service: {exc}")
    return problems, stopped


def recover_interrupted(layout: InstallLayout, progress: Progress = _noop) -> Recovery | None:
    """Undo an install, upgrade or rollback that was killed before it committed (its journal is
    still there): stop what it started, put back the files and the manifest as they were, remove
    the directories and users it created. None when there was nothing to undo. Call it under
    :func:`install_lock`."""
    tx = Transaction.load(journal_path(layout))
    if tx is None:
        return None
    if tx.owner_alive():
        raise AiboxError(f"another install is running on {layout.root} (pid {tx.meta.get('pid')})", code="locked",
                         hint="wait for it to finish, then re-run")
    step = tx.step
    progress(f"rolling back an install that was interrupted while {step}")
    created = tuple(u.path for u in tx._undo if not u.existed)
    restored = tuple(u.path for u in tx._undo if u.existed)
    users = tuple(tx.users)
    problems, stopped = undo(layout, tx)
    if mf.load_manifest(layout) is None:
        # Nothing installed remains: neither does the supervisor's runtime state.
        for runtime in ("supervisor.pid", "supervisor.json", "engine.pid"):
            (layout.run / runtime).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            layout.run.rmdir()
    return Recovery(step, tuple(p for p in created if not Path(p).exists()), restored, users, stopped,
                    tuple(problems))


@contextlib.contextmanager
def install_lock(layout: InstallLayout) -> Iterator[None]:
    """One install, upgrade, rollback or uninstall at a time per prefix (the second one fails at
    once rather than interleave writes)."""
    import filelock

    key = hashlib.sha256(str(layout.root).encode()).hexdigest()[:16]
    path = StatePaths.from_env().home / "locks" / f"install-{key}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise AiboxError(f"another install, upgrade, rollback or uninstall is running on {layout.root}",
                         code="locked", hint="wait for it to finish, then re-run") from None
    try:
        yield
    finally:
        lock.release()
