"""Seekable byte sources for the GGUF header reader: a local file, or an HTTP(S) URL read
with Range requests through httpx (redirects followed, so a hub ``resolve`` URL works).

A source answers ``read_at(offset, n)``, knows its ``size`` when it can, counts the
``requests`` it made, and proposes how much to read ahead (``read_ahead``): a local file reads
1 MiB windows; a URL starts with 2 MiB and doubles what it has fetched so far, so a typical
header (≤ 12 MiB) costs 1–3 requests.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

from aiboxctl.env import Env
from aiboxctl.errors import AiboxError

LOCAL_READ_AHEAD = 1024 * 1024
HTTP_FIRST_READ = 2 * 1024 * 1024
HTTP_TIMEOUT_S = 30.0


def is_url(location: str | Path) -> bool:
    return isinstance(location, str) and location.startswith(("http://", "https://"))


class FileSource:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._f = open(path, "rb")  # noqa: SIM115 - closed by close()
        self.size: int | None = os.fstat(self._f.fileno()).st_size
        self.requests = 0

    def read_ahead(self, offset: int) -> int:
        return LOCAL_READ_AHEAD

    def read_at(self, offset: int, n: int) -> bytes:
        self.requests += 1
        self._f.seek(offset)
        return self._f.read(n)

    def close(self) -> None:
        self._f.close()


class HttpSource:
    """Range reads over HTTP(S). The total size comes from the first reply's Content-Range."""

    def __init__(self, url: str, client: Any = None) -> None:
        import httpx

        self.url = url
        self._own = client is None
        self._client = client or httpx.Client(follow_redirects=True, timeout=HTTP_TIMEOUT_S,
                                              headers=_auth_headers(url))
        self.size: int | None = None
        self.requests = 0
        self._fetched = 0

    def read_ahead(self, offset: int) -> int:
        return max(HTTP_FIRST_READ, self._fetched)

    def read_at(self, offset: int, n: int) -> bytes:
        import httpx

        if n <= 0:
            return b""
        self.requests += 1
        try:
            with self._client.stream("GET", self.url, headers={"Range": f"bytes={offset}-{offset + n - 1}"}) as r:
                if r.status_code == 416:
                    return b""
                if r.status_code == 200:
                    raise AiboxError(f"{self.url}: the server ignores Range requests; download the file instead",
                                     code="no_range_support", hint="aiboxctl pull, then inspect the local file")
                if r.status_code != 206:
                    raise AiboxError(f"{self.url}: HTTP {r.status_code}", code="http_error",
                                     hint="check the URL (and HF_TOKEN for gated repos)")
                total = r.headers.get("content-range", "").rpartition("/")[2]
                if total.isdigit():
                    self.size = int(total)
                data = bytearray()
                for chunk in r.iter_bytes():
                    data += chunk
                    if len(data) >= n:
                        break
        except httpx.HTTPError as exc:
            raise AiboxError(f"{self.url}: {type(exc).__name__}: {exc}", code="http_error",
                             hint="check the network, the URL or HF_ENDPOINT") from None
        self._fetched += len(data)
        return bytes(data[:n])

    def close(self) -> None:
        if self._own:
            self._client.close()


def _auth_headers(url: str) -> dict[str, str]:
    """Send HF_TOKEN only to the hub endpoint it belongs to."""
    token = os.environ.get(Env.HF_TOKEN)
    if not token:
        return {}
    endpoint = os.environ.get(Env.HF_ENDPOINT, "https://huggingface.co")
    if urlsplit(url).hostname == urlsplit(endpoint).hostname:
        return {"Authorization": f"Bearer {token}"}
    return {}


@contextmanager
def open_source(location: str | Path, client: Any = None) -> Iterator[FileSource | HttpSource]:
    src: FileSource | HttpSource
    if is_url(location):
        src = HttpSource(str(location), client)
        # Learn the size with the first read so that bounds checks apply from the start.
        try:
            yield _SizedHttp(src)
        finally:
            src.close()
        return
    path = Path(location)
    if path.is_dir():
        raise AiboxError(f"{path} is a directory, not a GGUF file", code="not_a_file")
    src = FileSource(path)
    try:
        yield src
    finally:
        src.close()


class _SizedHttp:
    """Does the first range read eagerly so ``size`` is known before parsing starts."""

    def __init__(self, src: HttpSource) -> None:
        self._src = src
        self._first = src.read_at(0, HTTP_FIRST_READ)

    @property
    def size(self) -> int | None:
        return self._src.size

    @property
    def requests(self) -> int:
        return self._src.requests

    def read_ahead(self, offset: int) -> int:
        return self._src.read_ahead(offset)

    def read_at(self, offset: int, n: int) -> bytes:
        first = self._first
        if offset + n <= len(first):
            return first[offset:offset + n]
        if offset < len(first):
            return first[offset:] + self._src.read_at(len(first), offset + n - len(first))
        return self._src.read_at(offset, n)
