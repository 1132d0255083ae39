"""The front door's ASGI app: routes by ``model``, relays answers as they arrive.

The body a client sends reaches the engine unchanged (the front door reads only ``model``,
``user`` and the messages' head from it), and the engine's answer reaches the client unchanged,
chunk by chunk (``aiter_raw``: no decoding, no buffering). While a request waits for a slot or
for the engine, the client's ``http.disconnect`` is watched for: a client that leaves cancels
the relay, which closes the engine connection, and the engine frees the slot at its next step.

With governed access (a gate with ``finish``, see gateway/access.py) three things change for an
admitted request: a stream that did not ask for ``stream_options.include_usage`` gets it added and
the engine's usage chunk is taken out again (the client sees what it asked for, the ledger gets
the tokens); the last bytes (a JSON body's last chunk, a stream's ``data: [DONE]``) are held until
the ledger row is committed, so an answer the client saw end is an acknowledged record; and every
admitted request is finished exactly once whatever its end (answered, refused after admission,
client gone, engine cut), which frees the key's concurrency and token reservation.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable

from fastapi import Request  # a module global: FastAPI reads the routes' annotations from here
from starlette.responses import Response as _AsgiResponse

from aiboxctl.access.gate import NotRecorded
from aiboxctl.gateway.access import UsageMeter, with_usage_in_stream
from aiboxctl.gateway.balance import affinity_key
from aiboxctl.gateway.config import GatewayConfig
from aiboxctl.gateway.metrics import GatewayMetrics
from aiboxctl.gateway.pool import Gateway, ModelPool, Refusal, Replica
from aiboxctl.gateway.upstream import Streamed
from aiboxctl.net import read_body_limited

log = logging.getLogger("aiboxctl.gateway")

# path → (endpoint label, role of the engines that serve it)
ROUTES: dict[str, tuple[str, str]] = {
    "/v1/chat/completions": ("chat", "chat"),
    "/v1/completions": ("completions", "chat"),
    "/v1/embeddings": ("embeddings", "embedding"),
    "/v1/rerank": ("rerank", "rerank"),
    "/rerank": ("rerank", "rerank"),
    "/v1/reranking": ("rerank", "rerank"),  # the alias some RAG tools call (the engine serves all three)
    "/v1/responses": ("responses", "chat"),  # OpenAI's Responses API
    "/v1/messages": ("messages", "chat"),  # Anthropic's Messages API
}
# a stream's last event, held with governed access until the request is recorded
_LAST_EVENTS = (b"data: [DONE]", b"event: response.completed", b"event: response.incomplete",
                b"event: response.failed", b"event: message_stop")
# Hop-by-hop and per-connection headers are not relayed (RFC 9110 §7.6.1).
_DROP = {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade", b"proxy-authenticate",
         b"proxy-authorization", b"date", b"server"}  # hop-by-hop, and what the front door's server sets itself

# The seam for client-facing keys, quotas and audit (gateway/access.py): called with the request,
# and for a routed request with its JSON body (read once, within max_body_bytes) and its size in
# bytes, and, for a request the front door makes on the client's behalf (docpick), the route's
# path as a fourth argument; a Refusal it returns is the answer. None admits everyone.
ClientGate = Callable[..., Awaitable["Refusal | None"]]


class _Access:
    """An admitted request's side of the relay: what it reads (usage) and how it is finished."""

    def __init__(self, admission: Any, settle: Callable[[Any, int, Any], Awaitable[None]], strip_usage: bool) -> None:
        self.admission, self._settle, self.strip_usage = admission, settle, strip_usage
        self.meter = UsageMeter(capture=getattr(admission, "request_content", None) is not None)
        self.done = False

    async def finish(self, status: int) -> None:
        """Once, shielded: a cancelled relay (the client left) still records and frees the key."""
        import anyio

        if self.done:
            return
        self.done = True
        with anyio.CancelScope(shield=True):
            await self._settle(self.admission, status, self.meter)

    def split(self, buf: bytes) -> tuple[bytes, bytes]:
        """SSE bytes → (complete events to send now, bytes to hold): an incomplete event and
        ``data: [DONE]`` (with anything after it) are held; the usage chunk the front door asked
        for is dropped."""
        *events, rest = buf.split(b"\n\n")
        out = []
        for i, ev in enumerate(events):
            if ev.startswith(_LAST_EVENTS):
                return b"".join(out), b"".join(e + b"\n\n" for e in events[i:]) + rest
            if not (self.strip_usage and _is_usage_event(ev)):
                out.append(ev + b"\n\n")
        return b"".join(out), rest


def _is_usage_event(event: bytes) -> bool:
    """The engine's usage chunk (``choices: []`` and ``usage``), asked for by the front door."""
    if not event.startswith(b"data:") or b'"usage"' not in event:
        return False
    try:
        obj = json.loads(event[5:])
    except ValueError:
        return False
    return isinstance(obj, dict) and obj.get("choices") == [] and obj.get("usage") is not None


def _error_response(refusal: Refusal) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse(refusal.body(), status_code=refusal.status, headers=refusal.headers())


def make_clients(config: GatewayConfig) -> dict[str, Any]:
    """One client per engine (gateway/upstream.py: aiohttp, a unix socket through its own
    connector), made on the event loop that serves. No proxies from the environment: an
    HTTP_PROXY must never see loopback traffic to the engines."""
    from aiboxctl.gateway.upstream import EngineClient

    token = config.internal_token()
    return {e.name: EngineClient(e.base_url, socket=e.socket, token=token, connect_timeout_s=config.connect_timeout_s)
            for e in config.engines}


def create_app(config: GatewayConfig, *, gate: ClientGate | None = None) -> Any:
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, Response

    metrics = GatewayMetrics()
    finish = getattr(gate, "finish", None)  # AccessGate: settle, ledger, audit after each admitted request

    async def settle(admission: Any, status: int, meter: Any) -> None:
        """Finish one admitted request (once): the key's metrics, then the gate's record."""
        usage = meter.usage()
        key, model = admission.key.name, admission.model
        metrics.key_requests.labels(key, model, str(status)).inc()
        metrics.key_tokens.labels(key, model, "prompt").inc(usage["prompt_tokens"])
        metrics.key_tokens.labels(key, model, "completion").inc(usage["completion_tokens"])
        await finish(admission, status, meter)
    holder: dict[str, Gateway] = {}
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        gw = holder["gw"] = Gateway(config, make_clients(config))
        for pool in gw.pools.values():
            metrics.bind_queue(pool.name, lambda p=pool: len(p.waiters))
            for r in pool.replicas:
                metrics.bind_replica(pool.name, r.name, lambda r=r: float(r.healthy), lambda r=r: float(r.slots),
                                     lambda r=r: float(r.failures))
        await gw.check_all()  # know the engines before the first request
        poller = asyncio.create_task(gw.poll_forever(), name="aibox-gateway-health")
        try:
            yield
        finally:
            poller.cancel()
            await asyncio.gather(*(r.client.aclose() for r in gw.replicas.values()), return_exceptions=True)

    app = FastAPI(title="aiboxctl gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.metrics = metrics
    app.state.gateway = holder

    async def refused(request: Request, body: dict[str, Any] | None = None, body_bytes: int = 0,
                      path: str | None = None) -> Refusal | None:
        if gate is None:
            return None
        refusal = await (gate(request, body, body_bytes) if path is None else gate(request, body, body_bytes, path))
        if refusal is not None:
            metrics.denied.labels(refusal.label).inc()
        return refusal

    async def admitted(request: Request, body: dict[str, Any] | None = None, body_bytes: int = 0) -> Any:
        refusal = await refused(request, body, body_bytes)
        return None if refusal is None else _error_response(refusal)

    async def admit_inner(request: Request, path: str, data: dict[str, Any]) -> _Access | None:
        """A request to the route ``path`` that the front door makes on a client's behalf (the
        document picker's engine calls), admitted as if the client had sent ``data`` there: the
        gate's scope, limits and fail-closed refusals (raised: the Refusal is the answer), and
        the ``_Access`` that finishes it like a relayed answer (metrics, ledger row, audit)."""
        refusal = await refused(request, data, len(json.dumps(data, ensure_ascii=False).encode()), path)
        if refusal is not None:
            raise refusal
        admission = getattr(request.state, "aibox_admission", None) if finish is not None else None
        request.state.aibox_admission = None  # one admission per inner request
        return _Access(admission, settle, strip_usage=False) if admission is not None else None

    @app.get("/health")
    async def health() -> Any:
        gw = holder["gw"]
        models, down = {}, []
        for pool in gw.pools.values():
            healthy = [r.name for r in pool.replicas if r.healthy]
            models[pool.name] = {"role": pool.role, "replicas": len(pool.replicas), "healthy": len(healthy),
                                 "down": {r.name: r.reason for r in pool.replicas if r.state == "down"},
                                 "slow": {r.name: r.reason for r in pool.replicas if r.state == "slow"}}
            if not healthy:
                down.append(pool.name)
        # Governed access that cannot record (ledger/audit not writable) refuses requests: degraded.
        problems = list(await gate.problems()) if hasattr(gate, "problems") else []
        body = {"status": "ok" if not down and not problems else "degraded", "models": models, "models_down": down,
                **({"problems": problems} if problems else {})}
        return JSONResponse(body, status_code=200 if not down and not problems else 503)

    @app.get("/metrics")
    async def metrics_endpoint(request: Request) -> Any:
        denied = await admitted(request)
        if denied is not None:
            return denied
        body, ctype = metrics.render()
        return Response(body, media_type=ctype)

    @app.get("/v1/models")
    async def list_models(request: Request) -> Any:
        denied = await admitted(request)
        if denied is not None:
            return denied
        data = []
        for pool in holder["gw"].pools.values():
            ctxs = [r.slot_ctx for r in pool.replicas if r.slot_ctx]
            data.append({"id": pool.name, "object": "model", "created": started, "owned_by": "aiboxctl",
                         "role": pool.role, "context_length": min(ctxs) if ctxs else None,
                         "replicas": len(pool.replicas), "replicas_healthy": sum(r.healthy for r in pool.replicas)})
        return {"object": "list", "data": data}

    async def proxied(request: Request) -> Any:
        arrived = time.monotonic()
        endpoint, role = ROUTES[request.url.path]
        try:  # read once, within the limit, before the gate: it needs the model and the size
            body = await _read_body(request, config.max_body_bytes)
            data = _parse(body)
        except Refusal as refusal:
            return _error_response(refusal)
        denied = await admitted(request, data, len(body))
        if denied is not None:
            return denied
        admission = getattr(request.state, "aibox_admission", None) if finish is not None else None
        try:
            pool = _resolve(holder["gw"], data, role, request.url.path)
        except Refusal as refusal:
            if admission is not None:  # admitted, then refused here (unknown model): free what it holds
                await settle(admission, refusal.status, UsageMeter())
            return _error_response(refusal)
        strip_usage = False
        if admission is not None and endpoint in ("chat", "completions"):  # the others always carry usage
            asked = with_usage_in_stream(data)  # a stream's tokens are only known from its usage chunk
            if asked is not None:
                body, strip_usage = json.dumps(asked, ensure_ascii=False).encode(), True
        return _Relay(holder["gw"], metrics, pool, endpoint, request.url.path, body,
                      affinity_key(data) if role == "chat" else None, arrived,
                      accept=request.headers.get("accept"),
                      access=_Access(admission, settle, strip_usage) if admission is not None else None,
                      stream=data.get("stream") is True)

    for path in ROUTES:
        app.add_api_route(path, proxied, methods=["POST"])
    from aiboxctl.gateway.docpick import mount as mount_docpick  # the page's long documents (issue 17)

    mount_docpick(app, holder, guard=admitted, admit=admit_inner, allows=getattr(gate, "allows", None),
                  max_body_bytes=config.max_body_bytes)
    from aiboxctl.webui import mount as mount_page  # the chat page at / (issue 17)

    mount_page(app, guard=admitted)
    from aiboxctl.gateway.admin import mount as mount_admin  # the page's admin view (admin keys)

    mount_admin(app, holder, gate)
    return app


async def _read_body(request: Any, limit: int) -> bytes:
    return await read_body_limited(request, limit, too_large=Refusal(
        413, f"the request body is larger than the front door's limit of {limit} bytes (max_body_bytes in gateway.yaml)",
        code="request_too_large"))


def _parse(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise Refusal(400, "the request body is not valid JSON", code="invalid_json") from None
    if not isinstance(data, dict):
        raise Refusal(400, "the request body must be a JSON object", code="invalid_request")
    return data


def _resolve(gw: Gateway, data: dict[str, Any], role: str, path: str) -> ModelPool:
    """The pool of the request's model: 404 for a model this box does not serve (OpenAI's
    shape), 400 for a model of another role; no ``model`` means the one model of this role."""
    model = data.get("model")
    if model is None:
        of_role = [p for p in gw.pools.values() if p.role == role]
        if len(of_role) == 1:
            return of_role[0]
        served = ", ".join(p.name for p in of_role) or "none"
        raise Refusal(400, f"'model' is required: this box serves several {role} models ({served})"
                      if of_role else f"this box serves no {role} model", code="model_required", param="model")
    if not isinstance(model, str):
        raise Refusal(400, "'model' must be a string", code="invalid_request", param="model")
    pool = gw.pools.get(model)
    if pool is None:
        raise Refusal(404, f"The model '{model}' does not exist", code="model_not_found", param="model")
    if pool.role != role:
        raise Refusal(400, f"model '{model}' is a {pool.role} model; {path} needs a {role} model",
                      code="wrong_model_role", param="model")
    return pool


class _ClientGone(Exception):
    pass


class _Unresponsive(Exception):
    """The engine sent nothing for ``stream_idle_timeout_s`` (the message says so)."""


class _Hold:
    """A relay's place on its replica (``Replica.in_flight``): the health poller calls ``cut``
    when it finds the engine hung, which cancels the relay's work on that engine; the relay then
    ends the client's answer itself (see ``_Relay._unresponsive``)."""

    def __init__(self) -> None:
        import anyio

        self.scope = anyio.CancelScope()
        self.reason: str | None = None
        self.streaming = False  # an SSE answer whose first bytes were relayed

    def cut(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self.scope.cancel()


class _EngineCut(Exception):
    """Raised to the server to cut a started body the engine stopped sending (no clean end exists)."""


class _Relay(_AsgiResponse):  # a Response, so FastAPI hands it to the server instead of serialising it
    """An ASGI response that takes a slot, sends the body to the engine and relays the answer,
    while a second task waits for the client's ``http.disconnect`` and cancels it all. An engine
    found hung (the health poller's ``_Hold.cut``) or, for a stream, silent for
    ``stream_idle_timeout_s`` ends the answer: a 502 before anything was sent, else a final SSE
    error event (a started body that is not a stream is cut)."""

    def __init__(self, gw: Gateway, metrics: GatewayMetrics, pool: ModelPool, endpoint: str, path: str,
                 body: bytes, key: str | None, arrived: float, accept: str | None,
                 access: _Access | None = None, stream: bool = False) -> None:
        self.gw, self.metrics, self.pool, self.endpoint, self.path = gw, metrics, pool, endpoint, path
        self.access = access
        self.status = 499  # what an admitted request is recorded with unless the relay learns better
        self.body, self.key, self.arrived = body, key, arrived
        self.stream = stream  # the client asked for a stream: stream_idle_timeout_s applies
        self.started = self.ended = self.counted = False  # response start sent; its end sent; requests_total counted
        self.sse, self.tail = False, b""  # the answer is SSE; its last bytes sent (an event's end?)
        self.background = None  # read by FastAPI; Response.__init__ is not called (nothing to render)
        self.engine_headers = {"content-type": "application/json"}
        if accept:
            self.engine_headers["accept"] = accept

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        import anyio

        async with anyio.create_task_group() as tg:
            async def watch() -> None:
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(watch)
            try:
                await self.relay(send)
            finally:
                tg.cancel_scope.cancel()

    async def relay(self, send: Callable) -> None:
        try:
            await self._relay(send)
        finally:  # refused in the queue, the client gone, the engine cut: still recorded, key freed
            if self.access is not None:
                await self.access.finish(self.status)

    async def _relay(self, send: Callable) -> None:
        m, pool = self.metrics, self.pool
        excluded: frozenset[str] = frozenset()
        while True:
            waited = time.monotonic()
            try:
                replica = await self.gw.acquire(pool, self.key, excluded)
            except Refusal as refusal:
                m.rejected.labels(pool.name, refusal.reason or "other").inc()
                m.requests.labels(pool.name, "", self.endpoint, str(refusal.status)).inc()
                self.status = refusal.status
                if self.access is not None:  # recorded before the client sees it, like an answer's end
                    try:
                        await self.access.finish(refusal.status)
                    except NotRecorded as exc:  # the refusal stands; /health shows the failing store
                        log.error("refusal not acknowledged: %s", exc)
                await _send_json(send, refusal.status, refusal.body(), refusal.headers())
                return
            except BaseException:  # the client left while queued
                m.requests.labels(pool.name, "", self.endpoint, "499").inc()
                raise
            m.queue_wait.labels(pool.name).observe(time.monotonic() - waited)
            hold = _Hold()
            replica.in_flight.add(hold)
            try:
                with hold.scope:
                    if await self._attempt(replica, send, hold):
                        excluded = excluded | {replica.name}  # it could not be reached: try another one
                        continue
            except _Unresponsive as exc:
                hold.reason = str(exc)
            finally:
                replica.in_flight.discard(hold)
                self.gw.release(replica)
            if hold.reason is not None and not self.ended:
                await self._unresponsive(replica, send, hold.reason)
            return

    async def _attempt(self, replica: Replica, send: Callable, hold: _Hold) -> bool:
        """One engine's answer relayed; True when the engine could not be reached (nothing sent
        to the client yet: the replica is taken out and the request goes to another one)."""
        from aiboxctl.gateway.upstream import Silent, Unreachable

        m, pool = self.metrics, self.pool
        idle = self.gw.config.stream_idle_timeout_s if self.stream else None
        try:
            response = await replica.client.stream(self.path, self.body, self.engine_headers, idle)
        except Unreachable as exc:
            self.gw.mark_down(replica, str(exc))
            m.errors.labels(pool.name, replica.name, "connect").inc()
            return True
        except Silent:  # only with stream_idle_timeout_s (no read timeout otherwise)
            raise _Unresponsive(_idle_message(replica.name, idle)) from None
        except BaseException:
            if hold.reason is None:  # the client left (a cut is counted as 502 where it is answered)
                m.requests.labels(pool.name, replica.name, self.endpoint, "499").inc()
                self.counted = True
            raise
        try:
            await self._pass_through(replica, response, send, hold, idle)
        finally:
            response.close()  # synchronous: nothing a cancellation could interrupt
        return False

    async def _unresponsive(self, replica: Replica, send: Callable, reason: str) -> None:
        """End the answer of an engine that stopped responding: recorded as 502 (metrics, and the
        ledger before the client sees the end), then a 502 error if nothing was sent yet, a final
        SSE error event for a stream, or, for a started body of another kind, a cut connection."""
        m, model = self.metrics, self.pool.name
        log.warning("answer from engine %s ended: %s", replica.name, reason)
        m.errors.labels(model, replica.name, "unresponsive").inc()
        if not self.counted:
            m.requests.labels(model, replica.name, self.endpoint, "502").inc()
            m.latency.labels(model, replica.name).observe(time.monotonic() - self.arrived)
        self.status = 502
        if self.access is not None:
            try:
                await self.access.finish(502)
            except NotRecorded as exc:
                log.error("cut answer not acknowledged: %s", exc)
        error = Refusal(502, reason, code="engine_unresponsive", type_="server_error")
        if not self.started:
            await _send_json(send, 502, error.body(), {})
        elif not self.sse:
            raise _EngineCut(reason)
        else:
            gap = b"" if not self.tail or self.tail.endswith(b"\n\n") else b"\n\n"  # after a partial event
            try:
                await _send(send, {"type": "http.response.body", "more_body": False, "body": gap + _sse_error(error)})
            except _ClientGone:
                pass

    async def _pass_through(self, replica: Replica, response: Streamed, send: Callable, hold: _Hold,
                            idle: float | None) -> None:
        from aiboxctl.gateway.upstream import Cut, Silent

        m, model, name = self.metrics, self.pool.name, replica.name
        access = self.access
        sse = self.sse = response.content_type.startswith("text/event-stream")
        held = b""  # with access: bytes kept back until the request is recorded
        status = "499"
        in_flight = m.in_flight.labels(model, name)
        in_flight.inc()
        try:
            headers = [(k, v) for k, v in response.raw_headers if k.lower() not in _DROP]
            headers.append((b"x-aibox-replica", name.encode()))
            await _send(send, {"type": "http.response.start", "status": response.status, "headers": headers})
            self.started = True
            first = True
            try:
                async for chunk in response.chunks():
                    replica.relayed += 1  # progress: a health check that times out now is forgiven
                    if first:
                        m.ttft.labels(model, name).observe(time.monotonic() - self.arrived)
                        first = False
                        hold.streaming = sse
                    if access is not None:
                        access.meter.feed(chunk)
                        chunk, held = access.split(held + chunk) if sse else (held, chunk)
                        if not chunk:
                            continue
                    await _send(send, {"type": "http.response.body", "body": chunk, "more_body": True})
                    self.tail = chunk[-2:] if len(chunk) >= 2 else (self.tail + chunk)[-2:]
            except Silent:  # only with stream_idle_timeout_s: silent that long
                status = "502"
                raise _Unresponsive(_idle_message(name, idle)) from None
            except Cut as exc:  # the engine died mid-answer: cut the client's connection too
                self.gw.mark_down(replica, f"answer cut: {exc}")
                m.errors.labels(model, name, "stream").inc()
                status = "502"
                self.status = 502
                raise
            if access is not None:  # recorded (ledger row fsynced) before the client gets the end
                self.status = response.status
                try:
                    await access.finish(response.status)
                except NotRecorded as exc:  # never acknowledged: a stream ends in an error event, a body is cut
                    log.error("answer not acknowledged: %s", exc)
                    if not sse:
                        raise
                    status = "500"
                    self.ended = True
                    await _send(send, {"type": "http.response.body", "more_body": False, "body": _sse_error(
                        Refusal(500, f"the answer could not be recorded: {exc}", code="recording_unavailable",
                                type_="server_error"))})
                    return
            self.ended = True
            await _send(send, {"type": "http.response.body", "body": held, "more_body": False})
            status = str(response.status)
        except _ClientGone:
            pass
        finally:
            in_flight.dec()
            if hold.reason is not None and status == "499":
                status = "502"  # cut by the health poller: the engine is hung
            m.requests.labels(model, name, self.endpoint, status).inc()
            m.latency.labels(model, name).observe(time.monotonic() - self.arrived)
            self.counted = True


def _sse_error(refusal: Refusal) -> bytes:
    """A stream's last event when its answer cannot end well (OpenAI's error shape)."""
    return b"data: " + json.dumps(refusal.body()).encode() + b"\n\n"


def _idle_message(replica: str, idle: float | None) -> str:
    return (f"engine {replica} sent nothing for {idle:g} s (stream_idle_timeout_s in gateway.yaml); "
            "the answer was ended")


async def _send(send: Callable, message: dict) -> None:
    try:
        await send(message)
    except OSError as exc:  # ASGI 2.4: sending to a client that left
        raise _ClientGone() from exc


async def _send_json(send: Callable, status: int, body: dict, headers: dict[str, str]) -> None:
    raw = json.dumps(body).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    hdrs += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    try:
        await _send(send, {"type": "http.response.start", "status": status, "headers": hdrs})
        await _send(send, {"type": "http.response.body", "body": raw})
    except _ClientGone:
        pass
