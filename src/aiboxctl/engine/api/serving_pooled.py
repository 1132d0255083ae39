"""One pooled request (embeddings, rerank) from raw body to answer, shared by both families:
the door's checks (key, readiness, body limit), JSON → body → token lists off the event loop,
each input held to the model's context (cut when the request says ``truncate``, else 400),
the worker's queue (429 when full), the answer, one audit record. A client that goes away
cancels its request's inputs still queued."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import Request as HttpRequest

from aiboxctl.engine.api.edge import ENDPOINTS, Edge, Rejected, parse_body
from aiboxctl.engine.api.protocol import RETRY_AFTER_S, error_response
from aiboxctl.engine.request import QueueFull
from aiboxctl.engine.state import EngineState


class PooledServing:
    """A subclass says its role, body type, how a body becomes inputs and how outputs become
    the answer."""

    endpoint: str
    role: str
    body_type: Any
    input_param: str  # the body field an input that is too long is blamed on

    def __init__(self, state: EngineState, edge: Edge) -> None:
        self.state, self.edge = state, edge

    def inputs(self, body: Any) -> tuple[list[list[int]], Any]:
        """(token list per input, the inputs as the audit log records them); ValueError → 400."""
        raise NotImplementedError

    def answer(self, body: Any, outputs: list[list[float]], n_tokens: int, model_id: str) -> dict:
        raise NotImplementedError

    def parse(self, raw: bytes) -> tuple[Any, list[list[int]], Any]:
        rt = self.state.runtime
        body = parse_body(raw, self.body_type)
        try:
            inputs, audit_prompt = self.inputs(body)
        except ValueError as exc:
            raise Rejected(400, str(exc), param=self.input_param, code="invalid_value",
                           audit_error="invalid request") from None
        fitted = []
        for i, tokens in enumerate(inputs):
            if not tokens:
                raise Rejected(400, f"input {i} is empty", param=self.input_param, code="invalid_value",
                               audit_error="empty input")
            cut = rt.fit(tokens, truncate=body.truncate)
            if cut is None:
                raise Rejected(400, f"input {i} has {len(tokens)} tokens; this model takes at most {rt.max_input} "
                                    "per input (send \"truncate\": true to cut longer inputs to it)",
                               param=self.input_param, code="context_length_exceeded", audit_error="input too long")
            fitted.append(cut)
        return body, fitted, audit_prompt

    async def wrong_role(self, request: HttpRequest) -> Any:
        """Any route this engine's role does not serve (chat on an embedding engine, …): 400."""
        started = time.monotonic()
        endpoint = ENDPOINTS.get(request.url.path, "other")
        key_id, denied = self.edge.authorise(request, endpoint)
        return denied if denied is not None else self._refuse_role(request, key_id, endpoint, started)

    def _refuse_role(self, request: HttpRequest, key_id: str | None, endpoint: str, started: float) -> Any:
        cfg = self.state.config
        self.edge.audit(key_id, endpoint, 400, started, error="wrong role")
        return error_response(400, f"the model {cfg.served_name!r} is a {cfg.role} model; it does not serve "
                                   f"{request.url.path}", code="model_not_supported", param="model")

    async def handle(self, request: HttpRequest) -> Any:
        state, edge, endpoint = self.state, self.edge, self.endpoint
        audit = edge.audit
        started, key_id, denied = edge.arrive(request, endpoint)
        if denied is not None:
            return denied
        if state.config.role != self.role:
            return self._refuse_role(request, key_id, endpoint, started)
        worker = state.embedder
        if state.status != "ok" or worker is None:
            audit(key_id, endpoint, 503, started, error="not ready")
            return edge.not_ready()
        parsed, refused = await edge.read_parsed(request, self.parse, key_id, endpoint, started)
        if refused is not None:
            return refused
        body, inputs, audit_prompt = parsed
        try:
            future = worker.submit(inputs)
        except QueueFull as exc:
            audit(key_id, endpoint, 429, started, error="queue full")
            return error_response(429, f"server busy: {exc.message}; retry shortly", type_="rate_limit_error",
                                  code=exc.code, headers={"Retry-After": str(RETRY_AFTER_S)})
        n_tokens = sum(len(t) for t in inputs)
        try:
            outputs = await asyncio.wrap_future(future)
        except asyncio.CancelledError:  # the client went away, or shutdown
            future.cancel()
            audit(key_id, endpoint, 499, started, prompt=audit_prompt, error="client gone",
                  extra={"prompt_tokens": n_tokens})
            raise
        except Exception as exc:  # noqa: BLE001 - the decode failed: the engine's 500
            message = getattr(exc, "message", None) or str(exc)
            audit(key_id, endpoint, 500, started, prompt=audit_prompt, error=message)
            return error_response(500, message, type_="server_error", code="engine_error")
        state.metrics.prompt_tokens.inc(n_tokens)
        try:
            result = self.answer(body, outputs, n_tokens, state.served_config.served_name)
        except ValueError as exc:
            audit(key_id, endpoint, 400, started, error="invalid request")
            return error_response(400, str(exc), code="invalid_value", param="dimensions")
        audit(key_id, endpoint, 200, started, prompt=audit_prompt, extra={"prompt_tokens": n_tokens,
                                                                            "inputs": len(inputs)})
        return result
