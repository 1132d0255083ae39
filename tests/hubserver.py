"""A real hub-compatible HTTP server on 127.0.0.1, for tests and the pull benchmark.

It speaks the parts of the Hugging Face Hub protocol that huggingface_hub 2.x calls when it
downloads one file (read from its source: ``get_hf_file_metadata`` → ``HEAD /{repo}/resolve/
{rev}/{file}``, then ``http_get`` → ``GET`` the ``Location`` with ``Range`` on resume; ``HfApi.
model_info`` → ``GET /api/models/{repo}[/revision/{rev}]``), plus ModelScope's two documented
HTTP endpoints (``/api/v1/models/{repo}/repo/files`` and ``/api/v1/models/{repo}/repo?FilePath=``):

* resolve: LFS files answer ``302`` to a "CDN" on another origin (``localhost`` instead of
  ``127.0.0.1``, so huggingface_hub does not follow it and drops the Authorization header, as
  with the real cdn-lfs host) carrying ``X-Repo-Commit``, ``X-Linked-Etag`` (the LFS sha256),
  ``X-Linked-Size`` and ``ETag``; small files answer ``200`` with their git blob id as ETag.
  A renamed repo answers ``307`` to its new name on the same host (followed).
* errors carry ``X-Error-Code`` like the Hub (``RepoNotFound``, ``EntryNotFound``,
  ``RevisionNotFound``, ``GatedRepo``), which huggingface_hub turns into typed exceptions.
* fault injection per file: drop the connection after N body bytes (once), serve corrupted
  bytes, delay the response, declare a size different from the real one.

Every request is logged (method, path, Range, body bytes sent) so tests can assert what
went over the wire.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_CHUNK = 1 << 20


@dataclass
class HubFile:
    data: bytes | None = None
    path: Path | None = None  # large files are served from disk
    lfs: bool = True
    sha256: str = ""
    size: int = 0
    # fault injection
    drop_after: int | None = None  # close the connection after this many body bytes (first GET only)
    corrupt: bool = False  # flip a byte in what is served (headers keep the true sha256)
    declared_size: int | None = None  # X-Linked-Size to announce instead of the real one
    ignore_range: bool = False  # answer 200 with the whole file even when asked for a range
    fail_ranges: bool = False  # answer 503 to any Range request (a resume fails until cleared)

    def __post_init__(self) -> None:
        if self.path is not None:
            self.size = self.path.stat().st_size
            if not self.sha256:
                h = hashlib.sha256()
                with self.path.open("rb") as fh:
                    while block := fh.read(1 << 22):
                        h.update(block)
                self.sha256 = h.hexdigest()
        else:
            self.data = self.data or b""
            self.size = len(self.data)
            self.sha256 = self.sha256 or hashlib.sha256(self.data).hexdigest()

    @property
    def git_oid(self) -> str:
        head = f"blob {self.size}\0".encode()
        if self.data is not None:
            return hashlib.sha1(head + self.data).hexdigest()
        return hashlib.sha1(head + self.sha256.encode()).hexdigest()  # stand-in; only used as an ETag

    def read(self, start: int, end: int) -> bytes:
        """Bytes [start, end) as served (corrupted when asked)."""
        if self.data is not None:
            chunk = self.data[start:end]
        else:
            with self.path.open("rb") as fh:  # type: ignore[union-attr]
                fh.seek(start)
                chunk = fh.read(end - start)
        if self.corrupt and start <= self.size // 2 < end:
            i = self.size // 2 - start
            chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1:]
        return chunk


@dataclass
class HubRepo:
    files: dict[str, HubFile] = field(default_factory=dict)
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    gated: bool = False
    token: str = "hf_good_token"


@dataclass
class LoggedRequest:
    method: str
    path: str
    range: str | None
    sent: int = 0  # body bytes written
    status: int = 0
    authorization: str | None = None


class HubServer:
    """``with HubServer() as hub: hub.add_file("org/repo", "m.gguf", data)``; ``hub.url``."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.repos: dict[str, HubRepo] = {}
        self.aliases: dict[str, str] = {}
        self.log: list[LoggedRequest] = []
        self.delay_s = delay_s  # answer every request this late (a slow mirror)
        self._lock = threading.Lock()
        self._dropped: set[tuple[str, str]] = set()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread: threading.Thread | None = None

    # --- setup ----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def cdn(self) -> str:
        return f"http://localhost:{self.port}"

    def add_file(self, repo: str, name: str, data: bytes | None = None, *, path: Path | None = None,
                 lfs: bool | None = None, **faults) -> HubFile:
        f = HubFile(data=data, path=path, lfs=name.endswith(".gguf") if lfs is None else lfs, **faults)
        self.repos.setdefault(repo, HubRepo()).files[name] = f
        return f

    def requests(self, method: str | None = None, contains: str = "") -> list[LoggedRequest]:
        with self._lock:
            return [r for r in self.log if (method is None or r.method == method) and contains in r.path
                    and "/api/agent-harnesses" not in r.path]

    def start(self) -> "HubServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- protocol -------------------------------------------------------------------------
    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_HEAD(self) -> None:
                self._dispatch(head=True)

            def do_GET(self) -> None:
                self._dispatch(head=False)

            # helpers
            def _entry(self) -> LoggedRequest:
                entry = LoggedRequest(self.command, self.path, self.headers.get("Range"),
                                      authorization=self.headers.get("Authorization"))
                with hub._lock:
                    hub.log.append(entry)
                return entry

            def _reply(self, entry: LoggedRequest, status: int, headers: dict[str, str],
                       body: bytes = b"", head: bool = False) -> None:
                entry.status = status
                self.send_response(status)
                headers = {"Content-Length": str(len(body)), **headers}
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if not head and body:
                    self.wfile.write(body)
                    entry.sent += len(body)

            def _error(self, entry: LoggedRequest, status: int, code: str | None, message: str,
                       head: bool, extra: dict[str, str] | None = None) -> None:
                headers = {"Content-Type": "application/json", "X-Error-Message": message, **(extra or {})}
                if code:
                    headers["X-Error-Code"] = code
                self._reply(entry, status, headers, json.dumps({"error": message}).encode(), head)

            def _dispatch(self, head: bool) -> None:
                entry = self._entry()
                if hub.delay_s:
                    time.sleep(hub.delay_s)
                url = urllib.parse.urlsplit(self.path)
                path = urllib.parse.unquote(url.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                try:
                    if m := re.fullmatch(r"/api/models/(.+?)(?:/revision/([^/]+))?", path):
                        return self._model_info(entry, m[1], m[2], head)
                    if m := re.fullmatch(r"/api/v1/models/(.+?)/repo/files", path):
                        return self._ms_files(entry, m[1], head)
                    if m := re.fullmatch(r"/api/v1/models/(.+?)/repo", path):
                        return self._ms_file(entry, m[1], query.get("FilePath", ""), head)
                    if m := re.fullmatch(r"/lfs/(.+)/([0-9a-f]{64})", path):
                        return self._cdn(entry, m[1], m[2], head)
                    if m := re.fullmatch(r"/(.+?)/resolve/([^/]+)/(.+)", path):
                        return self._resolve(entry, m[1], m[2], m[3], head)
                    self._error(entry, 404, None, "Not Found", head)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _auth_ok(self, repo: HubRepo) -> bool:
                return not repo.gated or self.headers.get("Authorization") == f"Bearer {repo.token}"

            def _model_info(self, entry, repo_id, revision, head) -> None:
                repo = hub.repos.get(repo_id)
                if repo is None:
                    return self._error(entry, 401, "RepoNotFound", "Repository not found", head)
                if not self._auth_ok(repo):
                    return self._error(entry, 403, "GatedRepo", "Access to this model is restricted", head)
                siblings = []
                for name, f in sorted(repo.files.items()):
                    s = {"rfilename": name, "size": f.size, "blobId": f.git_oid}
                    if f.lfs:
                        s["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": 134}
                    siblings.append(s)
                doc = {"_id": repo_id, "id": repo_id, "modelId": repo_id, "sha": repo.commit,
                       "private": False, "gated": "manual" if repo.gated else False, "disabled": False,
                       "tags": ["gguf"], "siblings": siblings}
                body = json.dumps(doc).encode()
                self._reply(entry, 200, {"Content-Type": "application/json"}, body, head)

            def _resolve(self, entry, repo_id, revision, name, head) -> None:
                if repo_id in hub.aliases:  # renamed repo: a same-host redirect hf follows
                    target = f"/{hub.aliases[repo_id]}/resolve/{revision}/{urllib.parse.quote(name)}"
                    return self._reply(entry, 307, {"Location": target}, b"", head)
                repo = hub.repos.get(repo_id)
                if repo is None:
                    return self._error(entry, 401, "RepoNotFound", "Repository not found", head)
                if not self._auth_ok(repo):
                    status = 401 if not self.headers.get("Authorization") else 403
                    return self._error(entry, status, "GatedRepo",
                                       "Access to model is restricted and you are not in the authorized list", head)
                if revision not in ("main", repo.commit):
                    return self._error(entry, 404, "RevisionNotFound", "Invalid rev id", head)
                f = repo.files.get(name)
                common = {"X-Repo-Commit": repo.commit}
                if f is None:
                    return self._error(entry, 404, "EntryNotFound", "Entry not found", head, common)
                if f.lfs:
                    size = f.declared_size if f.declared_size is not None else f.size
                    headers = {**common, "ETag": f'"{f.git_oid}"', "X-Linked-Etag": f'"{f.sha256}"',
                               "X-Linked-Size": str(size),
                               "Location": f"{hub.cdn}/lfs/{urllib.parse.quote(repo_id, safe='')}/{f.sha256}"}
                    return self._reply(entry, 302, headers, b"", head)
                return self._send_file(entry, f, {**common, "ETag": f'"{f.git_oid}"'}, head, key=(repo_id, name))

            def _cdn(self, entry, quoted_repo, sha, head) -> None:
                repo = hub.repos.get(urllib.parse.unquote(quoted_repo))
                for name, f in (repo.files.items() if repo else ()):
                    if f.sha256 == sha:
                        return self._send_file(entry, f, {"ETag": f'"{sha}"'}, head,
                                               key=(urllib.parse.unquote(quoted_repo), name))
                self._error(entry, 404, None, "no such object", head)

            def _ms_files(self, entry, repo_id, head) -> None:
                repo = hub.repos.get(repo_id)
                if repo is None:
                    body = json.dumps({"Code": 10010205001, "Message": f"model {repo_id} not exists",
                                       "Success": False}).encode()
                    return self._reply(entry, 404, {"Content-Type": "application/json"}, body, head)
                files = [{"Name": n.rsplit("/", 1)[-1], "Path": n, "Type": "blob", "Size": f.size,
                          "Sha256": f.sha256, "Revision": repo.commit, "IsLFS": f.lfs}
                         for n, f in sorted(repo.files.items())]
                body = json.dumps({"Code": 200, "Data": {"Files": files}, "Success": True}).encode()
                self._reply(entry, 200, {"Content-Type": "application/json"}, body, head)

            def _ms_file(self, entry, repo_id, name, head) -> None:
                repo = hub.repos.get(repo_id)
                f = repo.files.get(name) if repo else None
                if f is None:
                    body = json.dumps({"Code": 10010205001, "Message": "file not exists", "Success": False}).encode()
                    return self._reply(entry, 404, {"Content-Type": "application/json"}, body, head)
                self._send_file(entry, f, {}, head, key=(repo_id, name))

            def _send_file(self, entry, f: HubFile, headers: dict[str, str], head: bool,
                           key: tuple[str, str]) -> None:
                start, end, status = 0, f.size, 200
                rng = None if f.ignore_range else self.headers.get("Range")
                if rng and f.fail_ranges:
                    return self._error(entry, 503, None, "Service Unavailable", head)
                if rng and (m := re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())):
                    start = int(m[1])
                    end = min(int(m[2]) + 1, f.size) if m[2] else f.size
                    if start >= f.size:
                        return self._error(entry, 416, None, "Range Not Satisfiable", head,
                                           {"Content-Range": f"bytes */{f.size}"})
                    status = 206
                    headers = {**headers, "Content-Range": f"bytes {start}-{end - 1}/{f.size}"}
                entry.status = status
                self.send_response(status)
                for k, v in {**headers, "Content-Length": str(end - start), "Accept-Ranges": "bytes",
                             "Content-Type": "application/octet-stream"}.items():
                    self.send_header(k, v)
                self.end_headers()
                if head:
                    return
                if f.path is not None and not f.corrupt and f.drop_after is None:
                    # zero-copy: the server must not be the bottleneck of the pull benchmark
                    self.wfile.flush()
                    with f.path.open("rb") as fh:
                        entry.sent += self.connection.sendfile(fh, offset=start, count=end - start)
                    return
                drop_at = None
                if f.drop_after is not None and key not in hub._dropped:
                    hub._dropped.add(key)
                    drop_at = f.drop_after
                pos = start
                while pos < end:
                    n = min(_CHUNK, end - pos)
                    if drop_at is not None and pos + n > drop_at:
                        n = drop_at - pos
                        if n > 0:
                            self.wfile.write(f.read(pos, pos + n))
                            entry.sent += n
                        self.wfile.flush()
                        # Abort the connection mid-body: the client sees a short read.
                        self.connection.shutdown(socket.SHUT_RDWR)
                        self.close_connection = True
                        return
                    self.wfile.write(f.read(pos, pos + n))
                    entry.sent += n
                    pos += n

        return Handler


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connection refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
