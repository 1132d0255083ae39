"""The usage ledger: one row per request, never its content, in SQLite (WAL mode).

Durability: ``synchronous=FULL`` with WAL fsyncs the log at every commit, so a record survives a
kill -9 of the front door *and* a power cut. :meth:`Ledger.record` returns only after the commit
that holds the row has been fsynced — that is what "acknowledged" means here, and the gateway
records a request before it sends the answer's last bytes. To keep that affordable, one writer
thread commits everything that is waiting in one transaction (group commit): 16 requests that
finish together cost one fsync, not 16 (bench/access.py measures records/s).

A commit that fails (disk full, an I/O error, the database locked past ``busy_timeout_s``) fails
every ``record`` of its group and leaves :attr:`Ledger.failure` set until a later commit (or
:meth:`Ledger.probe`) succeeds: the front door refuses governed requests meanwhile and its
/health says why (docs/access.md, "When the ledger or the audit cannot be written").
"""

from __future__ import annotations

import queue
import sqlite3
import threading
import time
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Callable, Iterable, Optional

from aiboxctl.errors import UsageError

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
  id INTEGER PRIMARY KEY,
  time REAL NOT NULL,            -- arrival, epoch seconds
  key TEXT NOT NULL,
  department TEXT,
  model TEXT,
  endpoint TEXT,
  status INTEGER NOT NULL,
  prompt_tokens INTEGER NOT NULL DEFAULT 0,
  completion_tokens INTEGER NOT NULL DEFAULT 0,
  duration_ms REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS requests_time ON requests(time);
CREATE INDEX IF NOT EXISTS requests_key_time ON requests(key, time);
CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY, time REAL NOT NULL);  -- Ledger.probe's one row
"""
_PROBE = "INSERT OR REPLACE INTO probe (id, time) VALUES (1, ?)"
BUSY_TIMEOUT_S = 5.0  # a commit waits this long for a lock another process holds, then fails

BY = ("key", "department", "model")


@dataclass(frozen=True)
class UsageRecord:
    time: float
    key: str
    department: Optional[str]
    model: Optional[str]
    endpoint: Optional[str]
    status: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    duration_ms: float = 0.0


_COLUMNS = tuple(f.name for f in fields(UsageRecord))
_INSERT = f"INSERT INTO requests ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"


@dataclass(frozen=True)
class UsageRow:
    group: Optional[str]
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    duration_ms: float


@dataclass(frozen=True)
class UsageReport:
    since: Optional[float]
    until: float
    by: str
    rows: tuple[UsageRow, ...]


def connect(path: Path, timeout: float = 30) -> sqlite3.Connection:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=timeout)
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise sqlite3.OperationalError(f"journal_mode is {mode}, not wal")
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(SCHEMA)
    except sqlite3.DatabaseError as exc:
        raise UsageError(f"usage ledger {path} cannot be opened: {exc}", code="invalid_data_file",
                         hint="move the damaged file away; a new ledger starts empty") from None
    try:
        path.chmod(0o600)
    except PermissionError:
        pass
    return conn


class Ledger:
    """Appends usage records from any thread; one writer thread commits them in groups."""

    def __init__(self, path: Path, *, busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        self.path = Path(path)
        self._conn = connect(self.path, busy_timeout_s)
        # (records, done, outcome); records None: a probe (one write of the probe row)
        self._queue: "queue.Queue[tuple[list[UsageRecord] | None, threading.Event, list] | None]" = queue.Queue()
        self._writer = threading.Thread(target=self._write_loop, name="aibox-ledger", daemon=True)
        self._writer.start()
        self.commits = 0
        self.failure: str | None = None  # why the last commit failed; None once one succeeds

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            batch = [item]
            while True:  # everything already waiting goes into the same commit
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = None in batch
            batch = [b for b in batch if b is not None]
            if batch:
                error = None
                try:
                    with self._conn:  # BEGIN … COMMIT (fsync of the WAL: synchronous=FULL)
                        self._conn.execute("BEGIN")
                        self._conn.executemany(_INSERT, [astuple(r) for recs, _, _ in batch for r in recs or ()])
                        if any(recs is None for recs, _, _ in batch):
                            self._conn.execute(_PROBE, (time.time(),))
                    self.commits += 1
                    self.failure = None
                except Exception as exc:  # noqa: BLE001 - any failure fails the group; the thread lives on
                    error = exc
                    self.failure = f"{type(exc).__name__}: {exc}"
                for _, done, outcome in batch:
                    outcome.append(error)
                    done.set()
            if stop:
                return

    def record(self, *records: UsageRecord) -> None:
        """Returns once the rows are committed and fsynced; raises if they could not be."""
        self._commit(list(records))

    def probe(self) -> bool:
        """One fsynced write (the probe row): True, and :attr:`failure` cleared, when the ledger
        can be written again."""
        try:
            self._commit(None)
        except Exception:  # noqa: BLE001 - failure says why
            return False
        return True

    def _commit(self, records: list[UsageRecord] | None) -> None:
        done, outcome = threading.Event(), []
        self._queue.put((records, done, outcome))
        done.wait()
        if outcome and outcome[0] is not None:
            raise outcome[0]

    def tokens_since(self, key: str, since: float) -> int:
        """Prompt + completion tokens a key used since a time (seeds the day's quota at start)."""
        conn = sqlite3.connect(self.path, timeout=30)
        try:
            return tokens_since(conn, key, since)
        finally:
            conn.close()

    def close(self) -> None:
        self._queue.put(None)
        self._writer.join()
        self._conn.close()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def tokens_since(conn: sqlite3.Connection, key: str, since: float) -> int:
    row = conn.execute("SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0) FROM requests "
                       "WHERE key = ? AND time >= ?", (key, since)).fetchone()
    return int(row[0])


def usage_report(path: Path, *, since: float | None, by: str = "key",
                 now: Callable[[], float] = time.time) -> UsageReport:
    """Totals per key, department or model since a time (None: all)."""
    if by not in BY:
        raise UsageError(f"--by {by!r}: choose one of {', '.join(BY)}", hint="aiboxctl usage --by department")
    if not Path(path).exists():
        raise UsageError(f"no usage ledger at {path}", code="not_found",
                         hint="the gateway writes it once it serves a request with keys on")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            f"SELECT {by}, COUNT(*), SUM(status >= 400), SUM(prompt_tokens), SUM(completion_tokens), "
            f"SUM(duration_ms) FROM requests WHERE time >= ? GROUP BY {by} ORDER BY {by}",
            (since if since is not None else float("-inf"),)).fetchall()
    except sqlite3.DatabaseError as exc:
        raise UsageError(f"usage ledger {path} cannot be read: {exc}", code="invalid_data_file") from None
    finally:
        conn.close()
    out = tuple(UsageRow(g, int(n), int(e or 0), int(p or 0), int(c or 0), int((p or 0) + (c or 0)), float(d or 0))
                for g, n, e, p, c, d in rows)
    return UsageReport(since, now(), by, out)


def iter_records(path: Path) -> Iterable[UsageRecord]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        for row in conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM requests ORDER BY id"):
            yield UsageRecord(*row)
    finally:
        conn.close()
