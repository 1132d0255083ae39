"""What every request passes at the door, whichever route answers it: the API key (401), the
body limit (413, before the body is held in memory), the readiness check (503), one audit
record and one metrics count per answer, and OpenAI's JSON 500 for anything no route handled."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from fastapi import Request as HttpRequest
from pydantic import ValidationError

from aiboxctl.engine.api.protocol import RETRY_AFTER_S, error_response, validation_message
from aiboxctl.engine.request import Request
from aiboxctl.engine.security import key_fingerprint
from aiboxctl.engine.state import EngineState
from aiboxctl.net import read_body_limited

log = logging.getLogger("aiboxctl.engine")

# path → the endpoint label in metrics and the audit log
ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completions", "/v1/models": "models",
             "/metrics": "metrics", "/health": "health", "/v1/embeddings": "embeddings",
             "/v1/rerank": "rerank", "/rerank": "rerank", "/v1/reranking": "rerank",
             "/v1/responses": "responses", "/v1/messages": "messages"}


access = logging.getLogger("aiboxctl.engine.access")


def access_log(model: str, key_id: str | None, endpoint: str, status: int, started: float,
               req: Request | None) -> None:
    """One line per answered request in the engine's log (`aiboxctl logs -f` shows them): who
    (the key's name, never the key), which model and endpoint, the status, tokens and duration.
    Never content. The log handler puts the time in front."""
    tokens = (f" prompt_tokens={req.prompt_tokens} completion_tokens={req.completion_tokens}"
              if req is not None else "")
    access.info("%s key=%s model=%s status=%d%s duration_s=%.3f", endpoint, key_id or "-", model, status, tokens,
                time.monotonic() - started)


def from_loopback(request: HttpRequest) -> bool:
    """Whether the request came from this box (127.0.0.0/8 or ::1): a Prometheus on the box may
    scrape /metrics without a key. Metrics hold counts and timings, never content or keys."""
    import ipaddress

    host = request.client.host if request.client else None
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Rejected(Exception):
    """A request refused before it reaches the scheduler: its HTTP status and OpenAI error."""

    def __init__(self, status: int, message: str, *, code: str, audit_error: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.audit_error = status, message, code, param, audit_error


def parse_body(raw: bytes, body_type: Any) -> Any:
    """Raw bytes → JSON object → a validated ``body_type``; every failure is a 400 ``Rejected``
    (invalid JSON, not an object, nested too deeply, a field out of range). CPU-bound: callers
    run it off the event loop."""
    try:
        data = json.loads(raw)
    except RecursionError:
        raise Rejected(400, "the request body is nested too deeply", code="invalid_json",
                       audit_error="invalid JSON") from None
    except (ValueError, UnicodeDecodeError):
        raise Rejected(400, "the request body is not valid JSON", code="invalid_json",
                       audit_error="invalid JSON") from None
    if not isinstance(data, dict):
        raise Rejected(400, "the request body must be a JSON object", code="invalid_json", audit_error="invalid JSON")
    try:
        return body_type.model_validate(data)
    except ValidationError as exc:
        message, param = validation_message(exc)
        raise Rejected(400, message, param=param, code="invalid_value", audit_error="invalid request") from None
    except RecursionError:
        raise Rejected(400, "the request body is nested too deeply", code="invalid_json",
                       audit_error="invalid request") from None


class Edge:
    """The door's checks and records over one engine's state."""

    def __init__(self, state: EngineState) -> None:
        self.state = state

    def authorise(self, request: HttpRequest, endpoint: str) -> tuple[str | None, Any]:
        """(key id, None) when allowed, else (None, the 401 response), counted and audited with
        the presented key's fingerprint (never the key itself) and the client's address."""
        state = self.state
        if state.keys is None:
            return "anonymous", None
        presented = request.headers.get("authorization")
        if presented is None and "x-api-key" in request.headers:  # how Anthropic's clients send the key
            presented = "Bearer " + request.headers["x-api-key"]
        key_id = state.keys.check(presented)
        if key_id is None:
            client = request.client.host if request.client else None
            self.audit(None, endpoint, 401, time.monotonic(),
                       error="missing API key" if not presented else "invalid API key",
                       extra={"key_fingerprint": key_fingerprint(presented), "client": client})
            return None, error_response(401, "Invalid or missing API key (send 'Authorization: Bearer <key>').",
                                        code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        request.state.key_id = key_id
        return key_id, None

    def arrive(self, request: HttpRequest, endpoint: str) -> tuple[float, str | None, Any]:
        """A generation or pooled request's arrival: its start (kept on ``request.state`` for
        the access log) and the key check: (started, key id, None), or (started, None, the 401)."""
        started = time.monotonic()
        request.state.started = started
        key_id, denied = self.authorise(request, endpoint)
        return started, key_id, denied

    def not_ready(self) -> Any:
        state = self.state
        msg = f"the engine is not ready ({state.status}" + (f": {state.reason})" if state.reason else ")")
        return error_response(503, msg, type_="server_error", code="not_ready",
                              headers={"Retry-After": str(RETRY_AFTER_S * 5)})

    def audit(self, key_id: str | None, endpoint: str, status: int, started: float, req: Request | None = None,
              prompt: Any = None, completion: str | None = None, error: str | None = None,
              extra: dict[str, Any] | None = None) -> None:
        state = self.state
        state.metrics.count(endpoint, status)
        access_log(state.config.served_name, key_id, endpoint, status, started, req)
        if state.audit is None:
            return
        record: dict[str, Any] = {"key_id": key_id, "endpoint": endpoint, "status": status,
                                  "duration_s": round(time.monotonic() - started, 3), **(extra or {})}
        if req is not None:
            record.update(request_id=req.id, prompt_tokens=req.prompt_tokens,
                          completion_tokens=req.completion_tokens, finish_reason=req.finish_reason)
        if error:
            record["error"] = error
        try:
            state.audit.write(record, prompt=prompt, completion=completion)
        except OSError as exc:
            log.error("audit log write failed: %s", exc)

    async def read_body(self, request: HttpRequest) -> bytes:
        """The body, refused with 413 once it is larger than the configured limit: a declared
        Content-Length is checked before reading anything, a chunked body as it arrives, so an
        oversized body is never held in memory."""
        limit = self.state.config.body_limit
        too_large = Rejected(413, f"the request body is larger than this server's limit of {limit} bytes "
                                  "(max_body_bytes in the engine config)", code="request_too_large",
                             audit_error="body too large")
        return await read_body_limited(request, limit, too_large=too_large,
                                       bad_length=Rejected(400, "invalid Content-Length header", code="invalid_request",
                                                           audit_error="bad content-length"))

    async def read_parsed(self, request: HttpRequest, parse: Callable[[bytes], Any], key_id: str | None,
                          endpoint: str, started: float) -> tuple[Any, Any]:
        """The body read under the limit and parsed on a worker thread (JSON, validation and
        tokenising are CPU-bound; the event loop keeps answering): (parse's result, None), or
        (None, the refusal's answer, audited) when the body or ``parse`` is ``Rejected``."""
        try:
            return await asyncio.to_thread(parse, await self.read_body(request)), None
        except Rejected as exc:
            self.audit(key_id, endpoint, exc.status, started, error=exc.audit_error)
            return None, error_response(exc.status, exc.message, code=exc.code, param=exc.param)

    def unexpected(self, request: HttpRequest, exc: Exception) -> Any:
        """Any exception no route handled: OpenAI's JSON 500 (not Starlette's plain text),
        counted and audited like every other answer, the traceback in the log."""
        endpoint = ENDPOINTS.get(request.url.path, "other")
        log.error("unhandled error answering %s %s", request.method, request.url.path, exc_info=exc)
        started = getattr(request.state, "started", time.monotonic())
        self.audit(getattr(request.state, "key_id", None), endpoint, 500, started,
                   error=f"internal: {type(exc).__name__}")
        return error_response(500, f"internal server error ({type(exc).__name__})", type_="server_error",
                              code="internal_error")


class CatchAll:
    """ASGI middleware: an exception that escapes a route before the response has started is
    answered by ``on_error`` and goes no further. (Starlette's own handler for ``Exception``
    re-raises after answering, so uvicorn drops the client's keep-alive connection.)"""

    def __init__(self, app: Any, on_error: Callable[[HttpRequest, Exception], Any]) -> None:
        self.app, self.on_error = app, on_error

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:  # noqa: BLE001 - the last stop before a plain-text 500
            if started:
                raise
            await self.on_error(HttpRequest(scope, receive), exc)(scope, receive, send)
