"""The chat page office staff use, served by the front door at ``/``.

The page itself is built from ``web/`` (npm, esbuild) into ``static/`` and committed, so the
wheel carries it and nothing is built at install time (``web/README.md`` says how to rebuild and
check it). This module mounts it on a FastAPI app:

``GET /``                     index.html (no-cache: it names the current hashed assets)
``GET /assets/<name>-<hash>`` the page's JS/CSS (immutable, a year)
``GET /v1/aibox/web``         presets and limits the page needs (no key: nothing secret)
``POST /v1/aibox/extract``    a document's text (.txt/.md/.docx/.pdf), behind the caller's key check

Everything the page loads comes from this origin; a Content-Security-Policy says so to the
browser too.
"""

# No `from __future__ import annotations`: FastAPI reads the route functions' annotations (Request).

from dataclasses import asdict, dataclass, field
from typing import Any, Awaitable, Callable

from aiboxctl.net import read_body_limited
from aiboxctl.webui.extract import ExtractError, ExtractLimits, extract_text

STATIC_PACKAGE = "aiboxctl.webui"

# The browser may load and connect to this origin only; no inline script, no frames.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'")
_PAGE_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                 "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}


@dataclass(frozen=True)
class Preset:
    """A task preset: a system prompt the page offers under a name (zh and en)."""

    id: str
    name_zh: str
    name_en: str
    system: str


DEFAULT_PRESETS: tuple[Preset, ...] = (
    Preset("qa", "问答", "Q&A", "你是一名严谨的助手。请用简体中文准确、简洁地回答问题；不确定时直接说明。"),
    Preset("gongwen", "公文写作", "Official writing",
           "你是一名熟悉《党政机关公文格式》(GB/T 9704) 的公文写作助手。根据用户给出的要点起草通知、请示、报告、"
           "函等公文：标题、主送机关、正文、落款齐全，语言规范、庄重、简练，不编造事实与数字。"),
    Preset("summary", "摘要", "Summary",
           "你是一名摘要助手。用简体中文概括用户提供的文字：先用一句话给出要点，再分条列出关键事实、数字和结论，"
           "不添加原文没有的内容。"),
    Preset("translate", "翻译", "Translate",
           "你是一名专业译者。用户给出中文时译成英文，给出其他语言时译成简体中文；保留格式、术语准确，只输出译文。"),
)


@dataclass(frozen=True)
class WebSettings:
    presets: tuple[Preset, ...] = DEFAULT_PRESETS
    default_lang: str = "zh-CN"
    limits: ExtractLimits = field(default_factory=ExtractLimits)

    def public(self) -> dict[str, Any]:
        return {"default_lang": self.default_lang, "presets": [asdict(p) for p in self.presets],
                "max_upload_bytes": self.limits.max_bytes, "max_document_chars": self.limits.max_chars}


# (request) -> a response refusing it, or None to let it through: the front door's key check.
Guard = Callable[[Any], Awaitable[Any]]


def static_dir() -> Any:
    from importlib.resources import files

    return files(STATIC_PACKAGE) / "static"


def mount(app: Any, settings: WebSettings | None = None, *, guard: Guard | None = None) -> None:
    """Add the page, its assets, its settings and the extract endpoint to ``app``."""
    from pathlib import Path

    from fastapi import Request
    from fastapi.responses import JSONResponse, Response
    from starlette.concurrency import run_in_threadpool

    settings = settings or WebSettings()
    root = Path(str(static_dir()))
    index = (root / "index.html").read_bytes()
    assets = _load_assets(root / "assets")
    page_headers = {**_PAGE_HEADERS, "Cache-Control": "no-cache"}

    @app.get("/", include_in_schema=False)
    async def page() -> Any:
        return Response(index, media_type="text/html; charset=utf-8", headers=page_headers)

    @app.get("/assets/{name}", include_in_schema=False)
    async def asset(name: str, request: Request) -> Any:
        found = assets.get(name)  # only the files the build wrote: no request path reaches the disk
        if found is None:
            return Response("not found\n", status_code=404, media_type="text/plain")
        headers = {"Cache-Control": "public, max-age=31536000, immutable", "X-Content-Type-Options": "nosniff",
                   "Vary": "Accept-Encoding"}
        if "gzip" in request.headers.get("accept-encoding", ""):
            return Response(found.gzipped, media_type=found.media_type,
                            headers={**headers, "Content-Encoding": "gzip"})
        return Response(found.raw, media_type=found.media_type, headers=headers)

    @app.get("/v1/aibox/web", include_in_schema=False)
    async def web_settings() -> Any:
        return JSONResponse(settings.public(), headers={"Cache-Control": "no-cache"})

    @app.post("/v1/aibox/extract")
    async def extract(request: Request, name: str = "") -> Any:
        if guard is not None:
            denied = await guard(request)
            if denied is not None:
                return denied
        try:
            if not name:
                raise ExtractError(400, "missing_name", "give the file name: POST /v1/aibox/extract?name=FILE")
            data = await _read_limited(request, settings.limits.max_bytes)
            result = await run_in_threadpool(extract_text, name, data, settings.limits)
        except ExtractError as exc:
            return JSONResponse({"error": {"message": exc.message, "type": "invalid_request_error", "param": None,
                                           "code": exc.code}}, status_code=exc.status)
        return JSONResponse(asdict(result), headers={"Cache-Control": "no-store"})


@dataclass(frozen=True)
class _Asset:
    raw: bytes
    gzipped: bytes
    media_type: str


_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".txt": "text/plain; charset=utf-8"}


def _load_assets(folder: Any) -> dict[str, _Asset]:
    """Every built asset, read and gzipped once at start (a few hundred KB): the page's weight on
    the wire is the compressed size, and no request ever opens a file."""
    import gzip

    out = {}
    for path in sorted(folder.iterdir()) if folder.is_dir() else ():
        if path.is_file() and path.suffix in _TYPES:
            raw = path.read_bytes()
            out[path.name] = _Asset(raw, gzip.compress(raw, 9, mtime=0), _TYPES[path.suffix])
    return out


async def _read_limited(request: Any, limit: int) -> bytes:
    return await read_body_limited(request, limit, too_large=ExtractError(
        413, "file_too_large", f"the file is larger than the limit of {limit / 1e6:.1f} MB"))
