"""The model store: verified weight files and a record of where each came from.

Layout under the store root (``$AIBOX_MODELS``, default ``$AIBOX_HOME/models``)::

    index.json                      one record per file (below), written atomically under .index.lock
    <owner>/<repo>/<file>.gguf      a hub file (the same path whichever source served it)
    pypi/<package>/<file>.gguf      a model embedded in a PyPI package
    .partial/<owner>/<repo>/<file>  resumable downloads in progress (+ .json: which upstream object)
    .locks/                         one lock per file, so concurrent pulls of it wait, then reuse it
    .quarantine/<time>-<file>       files that failed sha256 verification: never served
    .quarantine/log.jsonl           one line per quarantined file: where it was, where it went, why

A record carries source, repo, revision, size, sha256 and times, plus the catalog variant and
quant it was pulled for, so ``find("deepseek-r1-distill-qwen-7b", "Q4_K_M")`` works offline.

Serving only verified bytes, without reading 40 GB on every start: a record also keeps the
file's *identity* (device, inode, size, mtime and ctime in ns) as it was when the file was last
hashed in full. :meth:`ModelStore.present` compares it with the file now: any write, truncate,
rename over it, chmod or ``utime`` changes the ctime (which no unprivileged call can set back),
so an unchanged identity means the hashed bytes are still the bytes; a changed one makes the file
be hashed again before it is used, and a mismatch quarantines it. What no identity shows (bits
rotting on the medium under the filesystem) ``models verify`` finds by re-reading everything.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from aiboxctl.errors import AiboxError, UsageError

INDEX_VERSION = 1


@dataclass(frozen=True)
class StoredFile:
    """One verified file in the store (contract 3: path, sha256, size, source)."""

    path: Path
    repo: str  # owner/name, or pypi:<package>
    file: str  # name in the repo (with any sub-folder)
    size: int
    sha256: str
    source: str  # hf | mirror | modelscope | pypi | dir
    endpoint: str | None = None  # which hub/mirror/folder served it
    revision: str | None = None  # commit, or the package version
    variant: str | None = None  # catalog variant it was pulled for
    quant: str | None = None
    shard: int | None = None  # 1-based, for split GGUFs
    shards: int | None = None
    expected_sha256_from: str | None = None  # hub-lfs | catalog | modelscope | package | none
    pulled_at: float = 0.0
    verified_at: float = 0.0
    identity: str | None = None  # file_identity() when last hashed in full; None: hash before use

    @property
    def name(self) -> str:
        return f"{self.repo}:{self.file}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        d["name"] = self.name
        return d


@dataclass(frozen=True)
class VerifyEntry:
    name: str
    path: Path
    ok: bool
    expected: str
    actual: str | None  # None: file missing
    quarantined_to: Path | None = None


@dataclass(frozen=True)
class VerifyReport:
    entries: tuple[VerifyEntry, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return all(e.ok for e in self.entries)


@dataclass(frozen=True)
class QuarantineEntry:
    path: Path  # where the file was served from
    moved_to: Path
    reason: str
    at: float


def file_identity(st: os.stat_result) -> str:
    """What changes whenever a file's bytes may have (see the module docstring)."""
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def _safe_parts(repo: str) -> list[str]:
    parts = [p for p in repo.replace(":", "/").split("/") if p]
    if not parts or any(p in (".", "..") or p.startswith(".") for p in parts):
        raise UsageError(f"not a repository name: {repo!r}", hint="use owner/name, e.g. bartowski/Qwen2.5-7B-Instruct-GGUF")
    return parts


class ModelStore:
    """``ModelStore(StatePaths.from_env().models)``."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser()

    # --- paths ----------------------------------------------------------------------------
    def path_for(self, repo: str, file: str) -> Path:
        return self.root.joinpath(*_safe_parts(repo), *_safe_parts(file))

    def partial_for(self, repo: str, file: str) -> Path:
        return self.root.joinpath(".partial", *_safe_parts(repo), *_safe_parts(file))

    def lock_for(self, repo: str, file: str):
        from filelock import FileLock

        key = hashlib.sha256(f"{repo}:{file}".encode()).hexdigest()[:24]
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        return FileLock(str(locks / f"{key}.lock"))

    @property
    def quarantine_dir(self) -> Path:
        return self.root / ".quarantine"

    def free_bytes(self) -> int:
        """Free space on the store's filesystem (its nearest existing parent)."""
        p = self.root
        while not p.exists() and p != p.parent:
            p = p.parent
        return shutil.disk_usage(p).free

    # --- the index ------------------------------------------------------------------------
    def _index_lock(self):
        from filelock import FileLock

        self.root.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.root / ".index.lock"))

    def _read(self) -> list[StoredFile]:
        try:
            doc = json.loads((self.root / "index.json").read_text())
        except FileNotFoundError:
            return []
        except (json.JSONDecodeError, OSError) as exc:
            raise AiboxError(f"model store index {self.root / 'index.json'} is unreadable: {exc}",
                             code="store_corrupt", hint="aiboxctl models verify") from exc
        out = []
        for rec in doc.get("files", []):
            rec = {k: v for k, v in rec.items() if k in StoredFile.__dataclass_fields__}
            rec["path"] = self.root / rec["path"]
            out.append(StoredFile(**rec))
        return out

    def _write(self, records: list[StoredFile]) -> None:
        files = []
        for r in sorted(records, key=lambda r: (r.repo, r.file)):
            d = asdict(r)
            d["path"] = os.path.relpath(r.path, self.root)
            files.append(d)
        tmp = self.root / f"index.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"version": INDEX_VERSION, "files": files}, indent=1) + "\n")
        os.replace(tmp, self.root / "index.json")

    def records(self) -> list[StoredFile]:
        return self._read()

    def get(self, repo: str, file: str) -> StoredFile | None:
        for r in self._read():
            if r.repo == repo and r.file == file:
                return r
        return None

    def present(self, repo: str, file: str, expected_sha256: str | None = None, *,
                progress=None) -> StoredFile | None:
        """The record when the file is in place and still the file that was hashed (and has the
        expected hash, when one is known); else None, and a file whose bytes no longer match
        its record is quarantined on the way. Cheap while the file is untouched: see
        :meth:`checked`."""
        r = self.get(repo, file)
        if r is None or (expected_sha256 and r.sha256 != expected_sha256.lower()):
            return None
        return self.checked(r, progress=progress)

    def by_path(self, path: Path | str) -> StoredFile | None:
        path = Path(path)
        return next((r for r in self._read() if r.path == path), None)

    @classmethod
    def containing(cls, path: Path | str) -> "ModelStore | None":
        """The store whose index lists ``path`` (found by walking up from it), if any."""
        path = Path(path).absolute()
        for folder in path.parents:
            if (folder / "index.json").is_file():
                store = cls(folder)
                try:
                    if store.by_path(path) is not None or store.quarantined(path) is not None:
                        return store
                except (AiboxError, KeyError, TypeError, ValueError, AttributeError):
                    continue  # an index.json that is not a store's (a dir: source's, say)
        return None

    def checked(self, r: StoredFile, *, progress=None) -> StoredFile | None:
        """``r`` when its file is still the one hashed in full (same identity), or was changed
        but hashes to the recorded sha256 again (the identity is then recorded anew). A file of
        another size or hash is quarantined and its record dropped: None. A file that changes
        while being hashed is not vouched for: None, and left where it is."""
        try:
            st = r.path.stat()
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        if st.st_size == r.size and r.identity == file_identity(st):
            return r
        if st.st_size != r.size:
            self._reject(r, st, f"size {st.st_size} bytes, recorded {r.size}")
            return None
        from aiboxctl.hub.verify import sha256_stable

        actual, after = sha256_stable(r.path, progress=progress)
        if after is None:
            return None
        if actual != r.sha256:
            self._reject(r, after, f"sha256 mismatch: expected {r.sha256}, got {actual}")
            return None
        now = time.time()
        self.update(r.repo, r.file, identity=file_identity(after), verified_at=now)
        return replace(r, identity=file_identity(after), verified_at=now)

    def _reject(self, r: StoredFile, st: os.stat_result, reason: str) -> Path | None:
        """Quarantine the file (when the path still holds the inode that was judged) and drop
        its record, so nothing finds it again."""
        moved = None
        try:
            now = r.path.stat()
            if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                moved = self.quarantine(r.path, reason)
        except FileNotFoundError:
            pass
        with self._index_lock():
            self._write([x for x in self._read() if not (x.repo == r.repo and x.file == r.file)])
        return moved

    def add(self, record: StoredFile) -> StoredFile:
        """Record a file its caller has just hashed in full (while writing it, or after): its
        identity now is the one that hash vouches for."""
        if record.identity is None and record.path.is_file():
            record = replace(record, identity=file_identity(record.path.stat()))
        with self._index_lock():
            records = [r for r in self._read() if not (r.repo == record.repo and r.file == record.file)]
            records.append(record)
            self._write(records)
        return record

    def update(self, repo: str, file: str, **changes) -> None:
        with self._index_lock():
            self._write([replace(r, **changes) if r.repo == repo and r.file == file else r for r in self._read()])

    def find(self, variant_or_name: str, quant: str | None = None) -> StoredFile | None:
        """A stored file by catalog variant (+quant), ``repo:file``, file name or repo; for a
        split model the first shard (llama.cpp opens the others from it)."""
        matches = self.find_all(variant_or_name, quant)
        if not matches:
            return None
        matches.sort(key=lambda r: (r.shard or 1, -r.pulled_at))
        return matches[0]

    def find_all(self, variant_or_name: str, quant: str | None = None) -> list[StoredFile]:
        key = variant_or_name.strip()
        out = []
        for r in self._read():
            hit = (r.variant == key or r.name == key or r.file == key or Path(r.file).name == key
                   or r.repo == key or r.path == Path(key))
            if hit and (quant is None or (r.quant or "").upper() == quant.upper()
                        or quant.upper() in r.file.upper()):
                if r.path.is_file():
                    out.append(r)
        return out

    # --- removal, verification, quarantine ------------------------------------------------
    def remove(self, variant_or_name: str, quant: str | None = None) -> list[StoredFile]:
        victims = self.find_all(variant_or_name, quant)
        if not victims:
            # also records whose file vanished
            victims = [r for r in self._read() if r.name == variant_or_name or r.variant == variant_or_name]
        if not victims:
            raise AiboxError(f"no model named {variant_or_name!r} in the store {self.root}",
                             code="not_found", hint="aiboxctl models list")
        gone = {(r.repo, r.file) for r in victims}
        with self._index_lock():
            self._write([r for r in self._read() if (r.repo, r.file) not in gone])
        for r in victims:
            r.path.unlink(missing_ok=True)
            _prune_empty(r.path.parent, self.root)
        return victims

    def quarantine(self, path: Path, reason: str = "sha256 mismatch") -> Path:
        """Move a file out of the store's served paths; keep it for inspection, and log where it
        went and why (``quarantined()`` finds it: status and install report it)."""
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        dest = self.quarantine_dir / f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{path.name}"
        os.replace(path, dest)
        dest.with_name(dest.name + ".reason").write_text(reason + "\n")
        entry = {"path": str(Path(path).absolute()), "moved_to": str(dest), "reason": reason, "at": time.time()}
        with open(self.quarantine_dir / "log.jsonl", "a", encoding="utf-8") as log:
            log.write(json.dumps(entry) + "\n")
        return dest

    def quarantined(self, path: Path | str) -> QuarantineEntry | None:
        """The latest quarantine of the file served from ``path``, if any."""
        want = str(Path(path).absolute())
        try:
            lines = (self.quarantine_dir / "log.jsonl").read_text(encoding="utf-8").splitlines()
        except OSError:
            return None
        for line in reversed(lines):
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("path") == want:
                return QuarantineEntry(Path(e["path"]), Path(e["moved_to"]), str(e.get("reason")), float(e["at"]))
        return None

    def verify(self, variant_or_name: str | None = None, *, quant: str | None = None,
               progress=None) -> VerifyReport:
        """Re-hash stored files against their records; mismatches are quarantined and their
        records dropped (so nothing serves them)."""
        from aiboxctl.hub.verify import sha256_stable

        if variant_or_name is None:
            targets = self._read()
        else:
            targets = [r for r in self._read() if r in self.find_all(variant_or_name, quant)
                       or r.variant == variant_or_name or r.name == variant_or_name]
            if not targets:
                raise AiboxError(f"no model named {variant_or_name!r} in the store {self.root}",
                                 code="not_found", hint="aiboxctl models list")
        entries = []
        for r in targets:
            if not r.path.is_file():
                entries.append(VerifyEntry(r.name, r.path, False, r.sha256, None))
                continue
            actual, after = sha256_stable(r.path, progress=progress)
            if after is not None and actual == r.sha256 and after.st_size == r.size:
                self.update(r.repo, r.file, verified_at=time.time(), identity=file_identity(after))
                entries.append(VerifyEntry(r.name, r.path, True, r.sha256, actual))
            elif after is None:  # written to while read: neither good nor proven bad
                entries.append(VerifyEntry(r.name, r.path, False, r.sha256, "changed while being read"))
            else:
                q = self._reject(r, after, f"sha256 mismatch: expected {r.sha256}, got {actual}")
                entries.append(VerifyEntry(r.name, r.path, False, r.sha256, actual, q))
        return VerifyReport(tuple(entries))


def check_space(store: ModelStore, items: list[tuple[Path | None, int | None]]) -> None:
    """Refuse (disk_too_small) before writing when the store's disk cannot take everything still
    to be written; ``items``: (partial file or None, size) of each."""
    need = 0
    for partial, size in items:
        if size:
            have = partial.stat().st_size if partial is not None and partial.is_file() else 0
            need += max(size - have, 0)
    free = store.free_bytes()
    if need > free:
        raise AiboxError(
            f"not enough disk space in {store.root}: need {gib(need)}, free {gib(free)} "
            f"(short by {gib(need - free)})",
            code="disk_too_small", hint=f"free {gib(need - free)} or point AIBOX_MODELS at a larger disk")


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _prune_empty(folder: Path, root: Path) -> None:
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent
