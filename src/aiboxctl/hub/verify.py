"""sha256, computed while the bytes are written rather than by reading the file again.

``HashingWriter`` is the file object huggingface_hub's ``http_get`` writes into. Each chunk
(10 MiB, hf's ``DOWNLOAD_CHUNK_SIZE``) is written to disk by the caller's thread and handed
to a hashing thread; hashlib releases the GIL on large buffers, so on two cores hashing runs
beside the network read instead of after it. The writer also survives hf's recovery paths:
``seek`` + ``truncate`` (a server that ignored ``Range`` and restarted from 0) rewinds the
hash to the new length by re-hashing the kept prefix from disk.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

READ_CHUNK = 8 * 1024 * 1024


def sha256_file(path: Path, *, limit: int | None = None,
                progress: Callable[[int], None] | None = None) -> str:
    """sha256 of a file (or of its first ``limit`` bytes)."""
    return _hash_prefix(path, limit, progress).hexdigest()


def sha256_stable(path: Path, *, progress: Callable[[int], None] | None = None
                  ) -> tuple[str, os.stat_result | None]:
    """sha256 of a file and its stat after reading it; the stat is None when the file changed
    while it was read (its identity moved on: the hash describes no single version of it)."""
    with open(path, "rb") as fh:
        before = os.fstat(fh.fileno())
        h = hashlib.sha256()
        while block := fh.read(READ_CHUNK):
            h.update(block)
            if progress:
                progress(len(block))
        after = os.fstat(fh.fileno())
    same = (before.st_size, before.st_mtime_ns, before.st_ctime_ns) == (after.st_size, after.st_mtime_ns,
                                                                        after.st_ctime_ns)
    return h.hexdigest(), after if same else None


def _hash_prefix(path: Path, limit: int | None, progress: Callable[[int], None] | None = None):
    h = hashlib.sha256()
    remaining = limit
    with open(path, "rb") as fh:
        while remaining is None or remaining > 0:
            block = fh.read(READ_CHUNK if remaining is None else min(READ_CHUNK, remaining))
            if not block:
                break
            h.update(block)
            if remaining is not None:
                remaining -= len(block)
            if progress:
                progress(len(block))
    return h


class HashingWriter:
    """A binary file opened for append whose sha256 is kept current in a background thread.

    ``prefix_sha`` lets a resumed download continue from an existing partial file: its bytes
    are hashed once (from the page cache, usually) before new bytes arrive.
    """

    def __init__(self, path: Path, *, on_write: Callable[[int], None] | None = None) -> None:
        self.path = Path(path)
        self._fh: BinaryIO = open(self.path, "ab")
        self._on_write = on_write
        self._queue: queue.Queue = queue.Queue(maxsize=8)
        self._hash = hashlib.sha256()
        self.hash_cpu_s = 0.0  # thread CPU time spent in sha256 (for the benchmark)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)
        self._thread.start()
        existing = self._fh.tell()
        if existing:
            self._rehash_prefix(existing)

    # -- the hashing thread ----------------------------------------------------------------
    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if isinstance(item, threading.Event):
                    item.set()
                    continue
                t0 = time.thread_time()
                self._hash.update(item)
                self.hash_cpu_s += time.thread_time() - t0
            except BaseException as exc:  # noqa: BLE001 - reported to the writer
                self._error = exc
            finally:
                self._queue.task_done()

    def _drain(self) -> None:
        done = threading.Event()
        self._queue.put(done)
        done.wait()
        if self._error:
            raise self._error

    def _rehash_prefix(self, length: int) -> None:
        self._drain()
        self._fh.flush()
        t0 = time.thread_time()
        self._hash = _hash_prefix(self.path, length)
        self.hash_cpu_s += time.thread_time() - t0

    # -- the file-object protocol http_get uses --------------------------------------------
    def write(self, data: bytes) -> int:
        n = self._fh.write(data)
        self._queue.put(bytes(data) if not isinstance(data, bytes) else data)
        if self._on_write:
            self._on_write(len(data))
        return n

    def tell(self) -> int:
        return self._fh.tell()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._fh.seek(offset, whence)

    def truncate(self, size: int | None = None) -> int:
        self._fh.flush()
        new = self._fh.truncate(size)
        self._rehash_prefix(new)
        return new

    def flush(self) -> None:
        self._fh.flush()

    def fileno(self) -> int:
        return self._fh.fileno()

    @property
    def size(self) -> int:
        self._fh.flush()
        return os.fstat(self._fh.fileno()).st_size

    def hexdigest(self) -> str:
        """Finish: wait for the hashing thread and return the sha256 of everything written."""
        self._drain()
        return self._hash.hexdigest()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def __enter__(self) -> "HashingWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
