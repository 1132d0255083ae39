"""Is an installation's model the verified file in the store, and is the running engine serving
that very file?

The store vouches for a file while its identity is the one it last hashed in full, and hashes it
again when that moved (:mod:`aiboxctl.hub.store`). The engine maps the model file when it starts:
a file quarantined and pulled again under it is a new inode the engine has never seen, so
``/proc/<pid>/maps`` tells whether the engine still serves the old one (the quarantined copy, or
a deleted one). Used by install (restart an engine whose model file changed), start/restart
(never start on a file that fails verification), status (say so, unhealthy) and
``models verify`` (stop a service whose model it quarantined).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from aiboxctl.errors import VerificationFailed
from aiboxctl.hub.store import ModelStore, file_identity

# Where a model's state is fine to serve.
SERVABLE = ("verified", "unmanaged")


@dataclass(frozen=True)
class ModelCheck:
    path: str
    state: str  # verified | unmanaged (not a store file) | changed | quarantined | missing
    problem: str | None = None  # one line when not servable
    quarantined_to: str | None = None


def _store_and_record(path: Path):
    store = ModelStore.containing(path)
    return store, (store.by_path(path) if store is not None else None)


def inspect_model(path: str | Path) -> ModelCheck:
    """Cheap (stat only, no hashing): for status."""
    p = Path(path)
    store, rec = _store_and_record(p)
    if p.is_file():
        if rec is None:
            return ModelCheck(str(p), "unmanaged")
        if rec.identity is not None and rec.identity == file_identity(p.stat()):
            return ModelCheck(str(p), "verified")
        return ModelCheck(str(p), "changed", f"the model file {p} changed since it was last verified; "
                                             "it may not be what was pulled")
    q = store.quarantined(p) if store is not None else None
    if q is not None:
        return ModelCheck(str(p), "quarantined", f"the model {p.name} failed verification ({q.reason}) and was "
                                                 f"quarantined to {q.moved_to}", str(q.moved_to))
    return ModelCheck(str(p), "missing", f"the model file {p} is missing")


def verify_model(path: str | Path, *, progress=None) -> ModelCheck:
    """The store's check: hashed again when the file changed since its last full hash; a
    mismatch is quarantined (and then reported as such)."""
    p = Path(path)
    store, rec = _store_and_record(p)
    if store is not None and rec is not None and store.checked(rec, progress=progress) is not None:
        return ModelCheck(str(p), "verified")
    return inspect_model(p)


def require_model(path: str | Path, *, hint: str, progress=None) -> ModelCheck:
    check = verify_model(path, progress=progress)
    if check.state not in SERVABLE:
        raise VerificationFailed(check.problem or f"the model {path} cannot be served", code="model_not_verified",
                                 hint=hint, data={"model": check.__dict__})
    return check


def engine_serves_current_file(pid: int | None, path: str | Path) -> bool | None:
    """True when process ``pid`` maps the file now at ``path``; False when it maps an earlier
    file of that name (moved to the quarantine, or deleted); None when that cannot be told (no
    such process, not readable, or the engine does not mmap its model)."""
    if not pid:
        return None
    real = os.path.realpath(path)
    name = Path(real).name
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return None
    earlier = False
    for line in maps.splitlines():
        fields = line.split(None, 5)
        if len(fields) < 6:
            continue
        mapped = fields[5]
        if mapped == real:  # the kernel names a mapping by the path its inode has now
            return True
        if mapped.removesuffix(" (deleted)").endswith(name):
            earlier = True
    if earlier:
        return False
    try:  # not mapped (mmap off): a file made after the process started is not the one it read
        import psutil

        return os.stat(real).st_ctime <= psutil.Process(pid).create_time() + 2.0
    except Exception:  # noqa: BLE001 - gone, or no such file: cannot tell
        return None


def engine_has_other_model(pid: int | None, path: str | Path) -> bool:
    return engine_serves_current_file(pid, path) is False


def quarantined_since(path: str | Path, since: float) -> str | None:
    """A note when the file at ``path`` was quarantined after ``since`` (the store found it
    corrupted on the way and it was pulled again)."""
    p = Path(path)
    store = ModelStore.containing(p)
    q = store.quarantined(p) if store is not None else None
    if q is None or q.at < since:
        return None
    return f"the stored model failed verification ({q.reason}): quarantined to {q.moved_to} and pulled again"


def stop_service_serving(paths: list[Path], root: str | Path | None = None) -> str | None:
    """Stop the installation under ``root`` when its model is one of ``paths`` (just
    quarantined): its engine maps those bytes. Returns the root it stopped, else None."""
    from aiboxctl.deploy import manifest as mf
    from aiboxctl.deploy.services import service_for
    from aiboxctl.deploy.spec import InstallSpec, install_layout

    layout = install_layout(root)
    installed = mf.load_manifest(layout)
    if installed is None or not installed.spec:
        return None
    wanted = {os.path.realpath(p) for p in paths}
    if os.path.realpath(installed.model_path) not in wanted:
        return None
    return str(layout.root) if service_for(InstallSpec.from_dict(installed.spec)).stop() else None
