"""The OpenAI-compatible HTTP API over the scheduler (FastAPI on uvicorn).

Why FastAPI/Starlette + uvicorn: well kept, asyncio-native (SSE through StreamingResponse,
disconnects cancel the stream so we can free the slot), pydantic validation for request
bodies, and uvicorn's graceful shutdown on SIGTERM. The HTTP side never calls into
llama.cpp's context: it renders the chat template, tokenises (read-only vocabulary) and hands
a :class:`Request` to the decode loop; tokens come back through ``call_soon_threadsafe``.

Start-up: the server listens at once; /health answers 503 while the self-test runs (child
process) and the model loads on a background thread, 200 once ready.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Optional, Union

from fastapi import Request as HttpRequest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from aiboxctl.engine.config import EngineConfig
from aiboxctl.engine.metrics import EngineMetrics
from aiboxctl.engine.scheduler import Event, QueueFull, Request, SamplingParams, Scheduler
from aiboxctl.engine.security import AuditLog, KeyRing, key_fingerprint
from aiboxctl.engine.template import TemplateError

log = logging.getLogger("aiboxctl.engine")

RETRY_AFTER_S = 1


# --- request bodies ------------------------------------------------------------------------

MAX_STOPS = 16
LOGIT_BIAS = 100.0  # OpenAI's range for a logit_bias value: -100 (ban) .. 100 (force)


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _Body(BaseModel):
    """The fields every generation request shares. Each one is honoured or rejected (400);
    ``model`` and ``user`` are accepted as labels (one model is served; ``user`` is the client's
    end-user id, which changes nothing here). NaN and infinities are refused."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)
    model: Optional[str] = None
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(40, ge=0)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repeat_penalty: float = Field(1.0, gt=0.0, le=10.0)
    seed: Optional[int] = None
    stop: Union[str, list[str], None] = Field(None, max_length=MAX_STOPS)
    logit_bias: Optional[dict[int, Annotated[float, Field(ge=-LOGIT_BIAS, le=LOGIT_BIAS)]]] = None
    stream: bool = False
    stream_options: Optional[_StreamOptions] = None
    n: int = Field(1, ge=1, le=1)
    ignore_eos: bool = False  # llama-server's extension: generate max_tokens whatever the model says
    user: Optional[str] = None

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> "_Body":
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self


class _TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: Optional[str] = None


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[_TextPart], None] = None

    def flat(self) -> dict[str, Any]:
        content = self.content
        if isinstance(content, list):
            if any(p.type != "text" for p in content):
                raise ValueError("only text content parts are supported")
            content = "".join(p.text or "" for p in content)
        role = "system" if self.role == "developer" else self.role
        return {**(self.model_extra or {}), "role": role, "content": content or ""}


class ChatBody(_Body):
    messages: list[_Message] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)


class CompletionBody(_Body):
    prompt: Union[str, list[str], list[int]]
    echo: bool = False

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, v: bool) -> bool:
        if v:
            raise ValueError("echo is not supported by this server")
        return v


# --- state ---------------------------------------------------------------------------------

@dataclass
class EngineState:
    """What the HTTP side knows about the engine; filled in by the boot thread."""

    config: EngineConfig
    status: str = "starting"  # starting | selftest | loading | ok | failed | stopping
    reason: str | None = None
    selftest: Any = None  # SelfTestResult
    runtime: Any = None
    scheduler: Scheduler | None = None
    template: Any = None  # CompiledTemplate
    template_source: str | None = None
    metrics: EngineMetrics = field(default_factory=EngineMetrics)
    keys: KeyRing | None = None
    audit: AuditLog | None = None
    started: float = field(default_factory=time.time)
    loop: Any = None  # the asyncio loop of the HTTP side (set at start-up)
    on_fatal: Callable[[str], None] | None = None
    fault: str | None = None  # test hook for the decode loop (Env.ENGINE_FAULT)

    @property
    def served_config(self) -> EngineConfig:
        return self.selftest.config if self.selftest is not None and self.selftest.ok else self.config


def boot(state: EngineState) -> None:
    """Self-test, load, start the decode loop. Runs on a background thread."""
    from aiboxctl.engine.llama import LlamaRuntime
    from aiboxctl.engine.selftest import run_selftest
    from aiboxctl.engine.template import resolve_chat_template

    cfg = state.config
    try:
        if cfg.selftest:
            state.status = "selftest"
            log.info("self-test: proving the configuration in a child process")
            result = run_selftest(cfg)
            state.selftest = result
            if not result.ok:
                raise _BootFailed(f"self-test failed: {result.fallback_reason}")
            if result.fallback:
                log.warning("self-test: serving with fallback %r because %s", result.fallback,
                            result.fallback_reason)
            else:
                log.info("self-test passed with the configured settings")
            cfg = result.config
        state.status = "loading"
        rt = LlamaRuntime(cfg)
        state.runtime = rt
        spec = resolve_chat_template(cfg, rt)
        state.template = spec.compile()
        state.template_source = spec.source
        loop = state.loop

        def deliver(batch: list) -> None:
            # one wake-up of the event loop per decode step, whatever the number of streams
            try:
                loop.call_soon_threadsafe(_deliver, batch)
            except RuntimeError:  # the loop is closed: the server has already stopped
                pass

        sched = Scheduler(rt, parallel=cfg.parallel, n_batch=cfg.n_batch, slot_ctx=cfg.slot_ctx,
                          queue_size=cfg.queue_size, metrics=state.metrics, deliver=deliver, fault=state.fault)
        state.metrics.bind(sched, rt.n_ctx)
        sched.start()
        state.scheduler = sched
        state.status = "ok"
        log.info("ready: %s, %d slots × %d tokens, chat template from %s", cfg.served_name, cfg.parallel,
                 cfg.slot_ctx, spec.source)
    except Exception as exc:  # noqa: BLE001 - reported in /health and by the CLI's exit
        reason = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        state.status, state.reason = "failed", reason
        log.error("engine failed to start: %s", reason)
        if state.on_fatal is not None:
            state.on_fatal(reason)


class _BootFailed(Exception):
    pass


class _Rejected(Exception):
    """A request refused before it reaches the scheduler: its HTTP status and OpenAI error."""

    def __init__(self, status: int, message: str, *, code: str, audit_error: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.audit_error = status, message, code, param, audit_error


def _deliver(batch: list) -> None:
    for emit, event in batch:
        emit(event)


def engine_problem(state: EngineState) -> str | None:
    """Why a started engine can no longer serve (its decode loop died or hangs), else None.
    The first caller to see it marks the engine failed, logs one line, answers the requests the
    loop holds with an error and calls ``on_fatal`` (serve: stop, exit 5, get restarted)."""
    if state.status == "failed" and state.scheduler is not None:
        return state.reason
    sched = state.scheduler
    if state.status != "ok" or sched is None:
        return None
    reason = sched.problem(state.served_config.watchdog_s)
    if reason is None:
        return None
    with _FATAL_LOCK:
        if state.status == "failed":
            return state.reason
        state.status, state.reason = "failed", reason
    log.error("engine unhealthy, stopping so that it is restarted: %s", reason)
    sched.abandon(f"engine failure: {reason}")
    if state.on_fatal is not None:
        state.on_fatal(reason)
    return reason


_FATAL_LOCK = threading.Lock()


def shutdown(state: EngineState) -> None:
    if state.status != "failed":  # serve's exit code and /health still report a failure
        state.status = "stopping"
    stopped = True
    if state.scheduler is not None:
        # a loop that already failed gets no grace: a hung step may never return
        stopped = state.scheduler.stop(timeout=1.0 if state.status == "failed" else 10.0)
        state.scheduler.close()
    if state.runtime is not None and stopped:  # a hung step may still be using the context
        state.runtime.close()


# --- helpers -------------------------------------------------------------------------------

def _error(status: int, message: str, *, type_: str = "invalid_request_error", code: str | None = None,
           param: str | None = None, headers: dict[str, str] | None = None) -> Any:
    from fastapi.responses import JSONResponse

    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_message(exc: ValidationError) -> tuple[str, str | None]:
    err = exc.errors()[0]
    loc = ".".join(str(x) for x in err.get("loc", ()))
    return (f"{loc}: {err.get('msg')}" if loc else str(err.get("msg"))), (str(err["loc"][0]) if err.get("loc") else None)


def _sampling(body: _Body, max_tokens: int, n_vocab: int) -> SamplingParams:
    """The request's sampling settings; ValueError (a 400) for a logit_bias token id outside
    the vocabulary."""
    stop = body.stop
    stops: tuple[str, ...] = (stop,) if isinstance(stop, str) else tuple(stop or ())
    bias = tuple(sorted((body.logit_bias or {}).items()))
    bad = [t for t, _ in bias if not 0 <= t < n_vocab]
    if bad:
        raise ValueError(f"logit_bias: token id {bad[0]} is not in this model's vocabulary (0..{n_vocab - 1})")
    return SamplingParams(max_tokens=max_tokens, temperature=body.temperature,
                          top_k=min(body.top_k, n_vocab),  # more than the vocabulary is all of it
                          top_p=body.top_p, min_p=body.min_p, repeat_penalty=body.repeat_penalty,
                          presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
                          seed=body.seed, stop=stops, ignore_eos=body.ignore_eos, logit_bias=bias)


def _usage(req) -> dict:
    return {"prompt_tokens": req.prompt_tokens, "completion_tokens": req.completion_tokens,
            "total_tokens": req.prompt_tokens + req.completion_tokens}


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


# --- the app -------------------------------------------------------------------------------

_ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completions", "/v1/models": "models",
              "/metrics": "metrics", "/health": "health"}


def create_app(state: EngineState) -> Any:
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, Response, StreamingResponse

    @asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        state.loop = asyncio.get_running_loop()
        threading.Thread(target=boot, args=(state,), name="aibox-boot", daemon=True).start()
        yield
        await asyncio.get_running_loop().run_in_executor(None, shutdown, state)

    app = FastAPI(title="aiboxctl engine", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    metrics = state.metrics

    def unexpected(request: HttpRequest, exc: Exception) -> Any:
        """Any exception no route handled: OpenAI's JSON 500 (not Starlette's plain text),
        counted and audited like every other answer, the traceback in the log."""
        endpoint = _ENDPOINTS.get(request.url.path, "other")
        log.error("unhandled error answering %s %s", request.method, request.url.path, exc_info=exc)
        started = getattr(request.state, "started", time.monotonic())
        audit(getattr(request.state, "key_id", None), endpoint, 500, started, error=f"internal: {type(exc).__name__}")
        return _error(500, f"internal server error ({type(exc).__name__})", type_="server_error", code="internal_error")

    app.add_middleware(_CatchAll, on_error=unexpected)

    def authorise(request: HttpRequest, endpoint: str) -> tuple[str | None, Any]:
        """(key id, None) when allowed, else (None, the 401 response), counted and audited with
        the presented key's fingerprint (never the key itself) and the client's address."""
        if state.keys is None:
            return "anonymous", None
        presented = request.headers.get("authorization")
        key_id = state.keys.check(presented)
        if key_id is None:
            client = request.client.host if request.client else None
            audit(None, endpoint, 401, time.monotonic(), error="missing API key" if not presented else "invalid API key",
                  extra={"key_fingerprint": key_fingerprint(presented), "client": client})
            return None, _error(401, "Invalid or missing API key (send 'Authorization: Bearer <key>').",
                                code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        request.state.key_id = key_id
        return key_id, None

    def not_ready() -> Any:
        msg = f"the engine is not ready ({state.status}" + (f": {state.reason})" if state.reason else ")")
        return _error(503, msg, type_="server_error", code="not_ready",
                      headers={"Retry-After": str(RETRY_AFTER_S * 5)})

    def audit(key_id: str | None, endpoint: str, status: int, started: float, req: Request | None = None,
              prompt: Any = None, completion: str | None = None, error: str | None = None,
              extra: dict[str, Any] | None = None) -> None:
        metrics.count(endpoint, status)
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

    @app.get("/health")
    async def health() -> Any:
        engine_problem(state)  # a dead or hung decode loop turns this 503 (and stops the process)
        st = state.selftest
        info: dict[str, Any] = {
            "status": state.status,
            "model": state.config.served_name,
            "fallback": st.fallback if st is not None else None,
            "fallback_reason": st.fallback_reason if st is not None else None,
            "selftest": None if st is None else
            [{"name": a.name, "ok": a.ok, "reason": a.reason, "changes": a.changes} for a in st.attempts],
        }
        sched = state.scheduler
        if state.status != "ok" or sched is None:
            if state.reason:
                info["reason"] = state.reason
            return JSONResponse(info, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S * 5)})
        busy = sched.busy_slots
        cfg = state.served_config
        info.update(slots_busy=busy, slots_free=sched.parallel - busy, slots_total=sched.parallel,
                    queue_depth=sched.queue_depth, kv_cells_used=sched.kv_cells_used, n_ctx=cfg.n_ctx,
                    slot_ctx=cfg.slot_ctx, repack=cfg.repack, chat_template=state.template_source)
        return info

    @app.get("/metrics")
    async def metrics_endpoint(request: HttpRequest) -> Any:
        _, denied = authorise(request, "metrics")
        if denied is not None:
            return denied
        body, ctype = metrics.render()
        return Response(body, media_type=ctype)

    @app.get("/v1/models")
    async def models(request: HttpRequest) -> Any:
        _, denied = authorise(request, "models")
        if denied is not None:
            return denied
        return {"object": "list", "data": [{"id": state.config.served_name, "object": "model",
                                            "created": int(state.started), "owned_by": "aiboxctl"}]}

    async def read_body(request: HttpRequest) -> bytes:
        """The body, refused with 413 once it is larger than the configured limit: a declared
        Content-Length is checked before reading anything, a chunked body as it arrives, so an
        oversized body is never held in memory."""
        limit = state.config.body_limit
        too_large = _Rejected(413, f"the request body is larger than this server's limit of {limit} bytes "
                                   "(max_body_bytes in the engine config)", code="request_too_large",
                              audit_error="body too large")
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                raise _Rejected(400, "invalid Content-Length header", code="invalid_request",
                                audit_error="bad content-length")
            if int(declared) > limit:
                raise too_large
        buf = bytearray()
        async for chunk in request.stream():
            buf += chunk
            if len(buf) > limit:
                raise too_large
        return bytes(buf)

    def prepare(raw: bytes, chat: bool) -> tuple[Any, list[int], Any]:
        """JSON → validated body → prompt tokens. CPU-bound (a large body, a long template, a
        long prompt), so it runs on a worker thread and the event loop keeps answering."""
        try:
            data = json.loads(raw)
        except RecursionError:
            raise _Rejected(400, "the request body is nested too deeply", code="invalid_json",
                            audit_error="invalid JSON") from None
        except (ValueError, UnicodeDecodeError):
            raise _Rejected(400, "the request body is not valid JSON", code="invalid_json",
                            audit_error="invalid JSON") from None
        if not isinstance(data, dict):
            raise _Rejected(400, "the request body must be a JSON object", code="invalid_json",
                            audit_error="invalid JSON")
        try:
            body = (ChatBody if chat else CompletionBody).model_validate(data)
        except ValidationError as exc:
            message, param = _validation_message(exc)
            raise _Rejected(400, message, param=param, code="invalid_value", audit_error="invalid request") from None
        except RecursionError:
            raise _Rejected(400, "the request body is nested too deeply", code="invalid_json",
                            audit_error="invalid request") from None
        rt = state.runtime
        try:
            if chat:
                messages = [m.flat() for m in body.messages]
                text = state.template.render(messages, add_generation_prompt=True)
                add_bos = rt.add_bos and not (state.template.spec.bos_token
                                              and text.startswith(state.template.spec.bos_token))
                tokens = rt.tokenize(text, add_special=add_bos, parse_special=True)
                audit_prompt: Any = messages
            else:
                prompt = body.prompt
                if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
                    if len(prompt) != 1:
                        raise ValueError("only one prompt per request is supported")
                    prompt = prompt[0]
                if isinstance(prompt, list):
                    if any(t < 0 or t >= rt.n_vocab for t in prompt):
                        raise ValueError(f"prompt token ids must be in 0..{rt.n_vocab - 1}")
                    tokens = list(prompt)
                else:
                    tokens = rt.tokenize(prompt, add_special=True, parse_special=False)
                audit_prompt = body.prompt
        except (TemplateError, ValueError, RecursionError) as exc:
            message = "the messages are nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise _Rejected(400, message, code="invalid_prompt", audit_error="bad prompt") from None
        return body, tokens, audit_prompt

    async def run(request: HttpRequest, endpoint: str, chat: bool) -> Any:
        started = time.monotonic()
        request.state.started = started
        key_id, denied = authorise(request, endpoint)
        if denied is not None:
            return denied
        if state.status != "ok" or state.scheduler is None:
            audit(key_id, endpoint, 503, started, error="not ready")
            return not_ready()
        try:
            raw = await read_body(request)
            body, tokens, audit_prompt = await asyncio.to_thread(prepare, raw, chat)
        except _Rejected as exc:
            audit(key_id, endpoint, exc.status, started, error=exc.audit_error)
            return _error(exc.status, exc.message, code=exc.code, param=exc.param)
        sched, cfg = state.scheduler, state.served_config
        if not tokens:
            audit(key_id, endpoint, 400, started, error="empty prompt")
            return _error(400, "the prompt is empty", param="prompt", code="invalid_prompt")
        limit = cfg.slot_ctx
        if len(tokens) >= limit:
            audit(key_id, endpoint, 400, started, error="prompt too long")
            return _error(400, f"the prompt has {len(tokens)} tokens; this server's limit per request is "
                               f"{limit} tokens (prompt + completion, n_ctx {cfg.n_ctx} / {cfg.parallel} slots)",
                          param="messages" if chat else "prompt", code="context_length_exceeded")
        wanted = (getattr(body, "max_completion_tokens", None) or body.max_tokens) or cfg.max_tokens_cap
        max_tokens = max(1, min(wanted, cfg.max_tokens_cap, limit - len(tokens)))
        events: asyncio.Queue = asyncio.Queue()
        # runs on the event loop: the scheduler hands events over through deliver()
        try:
            params = _sampling(body, max_tokens, state.runtime.n_vocab)
        except ValueError as exc:
            audit(key_id, endpoint, 400, started, error="invalid request")
            return _error(400, str(exc), param="logit_bias", code="invalid_value")
        req = Request(f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", tokens, params,
                      events.put_nowait)
        try:
            sched.submit(req)
        except QueueFull as exc:
            audit(key_id, endpoint, 429, started, error="queue full")
            return _error(429, f"server busy: {exc.message}; retry shortly", type_="rate_limit_error",
                          code=exc.code, headers={"Retry-After": str(RETRY_AFTER_S)})
        created = int(time.time())
        model_id = cfg.served_name
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            return StreamingResponse(
                _stream(req, events, sched, chat=chat, created=created, model_id=model_id,
                        include_usage=include_usage,
                        on_end=lambda status, text, err: audit(key_id, endpoint, status, started, req,
                                                                audit_prompt, text, err)),
                media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        parts: list[str] = []
        # Tokens keep arriving while the client is gone, so the disconnect is watched for on
        # its own: the watcher puts ("gone",) among the events and the slot is freed at once.
        watcher = asyncio.create_task(_watch_disconnect(request.receive, events.put_nowait))
        finished = False
        try:
            while True:
                ev = await events.get()
                kind = ev[0]
                if kind == "text":
                    parts.append(ev[1])
                elif kind == "done":
                    break
                elif kind == "gone":
                    audit(key_id, endpoint, 499, started, req, audit_prompt, "".join(parts), "client gone")
                    return Response(status_code=499)
                else:
                    finished = True
                    audit(key_id, endpoint, 500, started, req, audit_prompt, "".join(parts), ev[1])
                    return _error(500, ev[1], type_="server_error", code="engine_error")
            finished = True
        finally:
            watcher.cancel()
            if not finished:  # the client went away, or this handler was cancelled (shutdown)
                sched.cancel(req)
        text = "".join(parts)
        usage = _usage(req)
        audit(key_id, endpoint, 200, started, req, audit_prompt, text)
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "logprobs": None, "finish_reason": req.finish_reason}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": req.finish_reason}
            obj = "text_completion"
        return {"id": req.id, "object": obj, "created": created, "model": model_id,
                "choices": [choice], "usage": usage}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HttpRequest) -> Any:
        return await run(request, "chat", chat=True)

    @app.post("/v1/completions")
    async def completions(request: HttpRequest) -> Any:
        return await run(request, "completions", chat=False)

    return app


class _CatchAll:
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


async def _watch_disconnect(receive: Callable[[], Any], put: Callable[[Event], None]) -> None:
    """Wait for ``http.disconnect``. The body has been read, so the server's next ASGI
    message for this request is the disconnect (uvicorn sends nothing else)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            put(("gone",))
            return


async def _stream(req: Request, events: asyncio.Queue, sched: Scheduler, *, chat: bool, created: int,
                  model_id: str, include_usage: bool,
                  on_end: Callable[[int, str, str | None], None]) -> AsyncIterator[bytes]:
    """SSE chunks. Tokens that arrived together are sent as one chunk; a client that goes away
    cancels this generator, and ``finally`` tells the loop to free the slot."""
    obj = "chat.completion.chunk" if chat else "text_completion"
    base = {"id": req.id, "object": obj, "created": created, "model": model_id}
    parts: list[str] = []
    finished = False
    status, error = 200, None

    def chunk(text: str | None, finish: str | None, first: bool = False) -> bytes:
        if chat:
            delta: dict[str, Any] = {"role": "assistant", "content": text or ""} if first else \
                ({"content": text} if text is not None else {})
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return _sse({**base, "choices": [choice]})

    try:
        if chat:
            yield chunk(None, None, first=True)
        while True:
            ev = await events.get()
            texts: list[str] = []
            done = None
            while True:
                kind = ev[0]
                if kind == "text":
                    texts.append(ev[1])
                else:
                    done = ev
                    break
                try:
                    ev = events.get_nowait()
                except asyncio.QueueEmpty:
                    break
            if texts:
                text = "".join(texts)
                parts.append(text)
                yield chunk(text, None)
            if done is None:
                continue
            finished = True
            if done[0] == "error":
                status, error = 500, done[1]
                yield _sse({"error": {"message": done[1], "type": "server_error", "code": "engine_error"}})
            else:
                yield chunk(None, done[1])
                if include_usage:
                    yield _sse({**base, "choices": [], "usage": _usage(req)})
            yield b"data: [DONE]\n\n"
            return
    finally:
        if not finished:
            sched.cancel(req)
            status, error = 499, "client gone"
        on_end(status, "".join(parts), error)
