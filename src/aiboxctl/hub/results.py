"""What a pull returns and reports as it goes: one :class:`PulledFile` per file, the sources
it tried, and the :class:`Progress` callbacks a display implements (the core never prints)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiboxctl.hub.store import StoredFile


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
    status: str  # present | downloaded | resumed | linked (dir: only) | copied | extracted
    bytes_transferred: int = 0
    expected_sha256_from: str | None = None
    seconds: float = 0.0

    @classmethod
    def present(cls, rec: StoredFile) -> PulledFile:
        """A file the store holds already: nothing transferred."""
        return cls(rec.path, rec.repo, rec.file, rec.size, rec.sha256, rec.source, rec.endpoint, rec.revision,
                   "present", 0, rec.expected_sha256_from)


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
