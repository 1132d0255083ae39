"""The front door's side of governed access (issue 16): :class:`aiboxctl.access.gate.AccessControl`
adapted to HTTP. ``AccessGate`` is a ``ClientGate`` (app.py's seam): given a routed request's
parsed body (the route reads it once, within the size limit), it authenticates, checks the
model's scope and the key's limits, and leaves the admission on ``request.state.aibox_admission``;
a refusal comes back as the gateway's ``Refusal``
(OpenAI's error shape, Retry-After). ``UsageMeter`` reads the engine's ``usage`` from the bytes
relayed (a JSON body, or the SSE chunk that carries it) without changing them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import replace
from typing import Any, Callable, TypeVar

from aiboxctl.access.gate import AccessControl, Admission, reservation
from aiboxctl.access.keys import KeyRecord
from aiboxctl.access.refusal import AccessDenied
from aiboxctl.errors import AiboxError
from aiboxctl.gateway.pool import Refusal

log = logging.getLogger("aiboxctl.gateway")
T = TypeVar("T")

_METER_LIMIT = 1 << 20  # a JSON answer larger than this is not parsed for usage (counted as 0)
_REQUEST_TEXT = ("messages", "prompt", "input", "query", "documents", "system", "instructions")
ADMIN_PATHS = ("/metrics", "/v1/aibox/admin")  # an admin key only


def as_refusal(denied: AccessDenied) -> Refusal:
    return Refusal(denied.status, denied.message, code=denied.code, type_=denied.type, param=denied.param,
                   retry_after=denied.retry_after, reason=denied.limit or f"auth_{denied.status}")


def _keys_unavailable(exc: BaseException) -> Refusal:
    """The key file changed into something that is not keys (edited by hand, half-written,
    unreadable): no key can be checked, so every request is refused until it is fixed."""
    why = exc.message if isinstance(exc, AiboxError) else f"key file: {type(exc).__name__}: {exc}"
    log.error("refusing requests: %s", why)
    return Refusal(503, f"{why}; every request is refused until it is fixed (aiboxctl keys list)",
                   code="keys_unavailable", type_="server_error", retry_after=5, reason="keys_unavailable")


async def _off_loop(nowait: Callable[..., T | None], blocking: Callable[..., T], *args: Any) -> T:
    """``nowait(*args)`` on the event loop (memory and an ``os.stat``); when it cannot decide
    without I/O (None), ``blocking(*args)`` in a thread. Exceptions from either are the answer."""
    result = nowait(*args)
    return result if result is not None else await asyncio.to_thread(blocking, *args)


def _authorization(request: Any) -> str | None:
    auth = request.headers.get("authorization")
    if auth is None and "x-api-key" in request.headers:  # how Anthropic's clients send the key
        auth = "Bearer " + request.headers["x-api-key"]
    return auth


class AccessGate:
    def __init__(self, access: AccessControl, *, routes: dict[str, tuple[str, str]]) -> None:
        self.access, self.routes = access, routes

    async def __call__(self, request: Any, body: dict[str, Any] | None = None, body_bytes: int = 0,
                       path: str | None = None) -> Refusal | None:
        """``body``: a routed request's JSON object (None for /metrics, /v1/models, the page's
        upload: those need only a valid key, ADMIN_PATHS an admin one). ``path``: the route the
        body is for when it is not the request's own (the document picker's engine calls)."""
        auth = _authorization(request)
        path = path or request.url.path
        try:
            if body is None or path not in self.routes:
                key = await self._authenticate(auth)
                if path in ADMIN_PATHS:
                    self.access.keys.require_admin(key)
                return None
            model = body.get("model")
            reserve = reservation(body, body_bytes, self.access.settings.default_reserve_tokens)
            endpoint = self.routes[path][0]
            # On the loop when admission needs no I/O (most requests); else admit's reads, probes
            # and refusal records run in a thread, as before.
            admission = await _off_loop(self.access.admit_nowait, self.access.admit, auth, str(model or ""),
                                        endpoint, reserve)
        except AccessDenied as denied:
            return as_refusal(denied)
        except (AiboxError, OSError) as exc:  # the key file cannot be read as keys: fail closed, and say why
            return _keys_unavailable(exc)
        if self.access.settings.audit_content:
            admission = replace(admission, request_content={k: body[k] for k in _REQUEST_TEXT if k in body})
        request.state.aibox_admission = admission
        return None

    async def _authenticate(self, auth: str | None) -> KeyRecord:
        """The key (or AccessDenied) without blocking the event loop: on the loop when the key
        file is unchanged since it was read (one ``os.stat``), else the re-read in a thread."""
        return await _off_loop(self.access.keys.authenticate_nowait, self.access.keys.authenticate, auth)

    async def allows(self, request: Any, model: str) -> bool:
        """Whether the request's key may use ``model`` (its scope only: nothing is admitted or
        recorded), so that the document picker asks a retrieval model the key may use."""
        try:
            self.access.keys.authorize(await self._authenticate(_authorization(request)), model)
        except (AccessDenied, AiboxError, OSError):  # a broken key file: the request's admission says so
            return False
        return True

    async def problems(self) -> tuple[str, ...]:
        """Why requests cannot be recorded now (a probe write while failing): /health reports them.
        Only a failing store's probe writes, so only then is the check taken off the event loop."""
        if not self.access.failing():
            return ()
        return await asyncio.to_thread(self.access.problems)

    async def finish(self, admission: Admission | None, status: int, meter: "UsageMeter") -> None:
        """Before the last bytes: settle, and the ledger row fsynced (off the event loop); raises
        NotRecorded (access.gate) when the row or the audit record could not be written."""
        if admission is not None:
            content = None
            if admission.request_content is not None:
                content = {"request": admission.request_content, "answer": meter.text()}
            await asyncio.to_thread(self.access.finish, admission, status, **meter.usage(), content=content)


class UsageMeter:
    """Finds ``usage`` in an answer as it is relayed: the whole JSON body, or the SSE event that
    carries it (the last one, with ``stream_options.include_usage``). With ``capture`` (an audit
    that records content) it also assembles the answer's text, streamed or not."""

    def __init__(self, capture: bool = False) -> None:
        self._buf = bytearray()
        self._usage: dict[str, Any] | None = None
        self._sse = False
        self._capture = capture
        self._text: list[str] = []
        self._reasoning: list[str] = []

    def feed(self, chunk: bytes) -> None:
        if not self._buf and chunk.lstrip().startswith((b"data:", b"event:")):
            self._sse = True
        self._buf += chunk
        if self._sse:
            *events, rest = bytes(self._buf).split(b"\n\n")
            self._buf = bytearray(rest)
            for ev in events:
                for line in ev.splitlines():
                    if line.startswith(b"data:") and (self._capture or b'"usage"' in line):
                        try:
                            doc = json.loads(line[5:])
                        except ValueError:
                            continue
                        if isinstance(doc, dict):
                            self._usage = _usage_of(doc) or self._usage
                            if self._capture:
                                self._collect(doc, "delta")
        elif len(self._buf) > _METER_LIMIT:
            self._buf = bytearray()
            self._sse = True  # give up on this body

    def _collect(self, doc: dict[str, Any], part: str) -> None:
        for choice in doc.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            msg = choice.get(part) or {}
            text = msg.get("content") if isinstance(msg, dict) else None
            text = text if isinstance(text, str) else choice.get("text")
            if isinstance(text, str):
                self._text.append(text)
            reasoning = msg.get("reasoning_content") if isinstance(msg, dict) else None
            if isinstance(reasoning, str):
                self._reasoning.append(reasoning)

    def _body(self) -> Any:
        if self._sse or not self._buf:
            return None
        try:
            return json.loads(bytes(self._buf))
        except ValueError:
            return None

    def usage(self) -> dict[str, int]:
        usage = self._usage
        if usage is None:
            body = self._body()
            usage = _usage_of(body) if isinstance(body, dict) else None
        usage = usage if isinstance(usage, dict) else {}
        # OpenAI's chat/completions names, or input/output tokens (Responses API, Anthropic Messages)
        return {"prompt_tokens": int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0),
                "completion_tokens": int(usage.get("completion_tokens") or usage.get("output_tokens") or 0)}

    def text(self) -> dict[str, str]:
        """The answer relayed (content and, when the model thought, its reasoning)."""
        body = self._body()
        if isinstance(body, dict) and not self._text and not self._reasoning:
            self._collect(body, "message")
        out = {"content": "".join(self._text)}
        if self._reasoning:
            out["reasoning_content"] = "".join(self._reasoning)
        return out


def _usage_of(doc: dict[str, Any]) -> Any:
    """``usage`` of an answer or stream event; a Responses API event carries it in ``response``."""
    inner = doc.get("response")
    return doc.get("usage") or (inner.get("usage") if isinstance(inner, dict) else None)


def with_usage_in_stream(data: dict[str, Any]) -> dict[str, Any] | None:
    """A streaming request's body asking the engine for the usage chunk, or None when it already
    does (or does not stream): without it a stream's tokens cannot be counted."""
    if data.get("stream") is True and not (data.get("stream_options") or {}).get("include_usage"):
        return {**data, "stream_options": {**(data.get("stream_options") or {}), "include_usage": True}}
    return None
