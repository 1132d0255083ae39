"""One generation request, from raw body to answer, shared by every endpoint family (vLLM's
``serving_engine``): parse and validate off the event loop, check the prompt against the slot,
build the sampling settings, submit to the decode loop, then collect the answer or stream it as
SSE. Each family (``serving_chat``, ``serving_completions``) says only how its body becomes
prompt tokens and how its answers are shaped."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request as HttpRequest

from aiboxctl.engine.api.edge import Edge, Rejected, parse_body
from aiboxctl.engine.api.protocol import (
    RETRY_AFTER_S, SSE_DONE, GenerationBody, answer, error_response, sse, usage,
)
from aiboxctl.engine.request import Event, QueueFull, Request, SamplingParams
from aiboxctl.engine.scheduler import Scheduler
from aiboxctl.engine.state import EngineState
from aiboxctl.engine.template import TemplateError


def sampling_params(body: GenerationBody, max_tokens: int, n_vocab: int, grammar: str | None = None,
                    triggers: tuple[str, ...] = ()) -> SamplingParams:
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
                          seed=body.seed, stop=stops, ignore_eos=body.ignore_eos, logit_bias=bias, grammar=grammar,
                          grammar_triggers=triggers if grammar else (), logprobs=body.logprobs_wanted)


class OpenAIServing:
    """The generation path; a subclass per endpoint family fills in the class attributes and
    the four methods below the line."""

    endpoint: str  # the label in metrics and the audit log
    body_type: type[GenerationBody]
    id_prefix: str  # of the request id: chatcmpl-…, cmpl-…
    prompt_param: str  # the body field a too-long prompt is blamed on
    object_name: str  # "object" of a whole answer
    chunk_object_name: str  # "object" of a streamed chunk

    def __init__(self, state: EngineState, edge: Edge) -> None:
        self.state, self.edge = state, edge

    # --- what each family says ---------------------------------------------------------------
    def prompt_tokens(self, body: Any) -> tuple[list[int], Any]:
        """(prompt tokens, the prompt as the audit log records it). ValueError, TemplateError
        or RecursionError: the prompt is refused (400)."""
        raise NotImplementedError

    def max_tokens_wanted(self, body: Any) -> int | None:
        return body.max_tokens

    def grammar(self, body: Any) -> str | None:
        """GBNF the reply must match (structured output, a forced tool call), or None. Raises
        Rejected (a 400) for what cannot be enforced."""
        return None

    def grammar_triggers(self, body: Any) -> tuple[str, ...]:
        """Texts that make the grammar lazy: it holds only from the first of them on (the tool-call
        marker under ``tool_choice: auto``; the end of the thinking); () holds from the first token."""
        return ()

    def logprobs(self, body: Any) -> Callable[[list[tuple]], dict] | None:
        """The shape of ``choices[].logprobs`` for a list of the loop's logprobs entries (None:
        the request did not ask; ``choices[].logprobs`` stays null)."""
        return None

    def reader(self, body: Any) -> Any:
        """A per-request object that reads the reply as it is written (tool calls), handed to
        ``choice``/``chunk_choice``; None when the text goes out as it is."""
        return None

    def choice(self, text: str, finish_reason: str | None, reader: Any = None) -> dict:
        """The one choice of a whole answer."""
        raise NotImplementedError

    def chunk_choice(self, text: str | None, finish_reason: str | None, reader: Any = None) -> dict | None:
        """The one choice of a streamed chunk (``text`` None: the closing chunk); None: nothing
        to send yet (the reader holds the text back)."""
        raise NotImplementedError

    def request_options(self, body: Any) -> dict[str, Any]:
        """Extra :class:`Request` arguments decided with the prompt (a chat reply's reasoning
        parser and thinking budget)."""
        return {}

    def reasoning_choice(self, text: str) -> dict:
        """A streamed chunk's choice carrying thinking (only a family with a reasoning parser)."""
        raise NotImplementedError

    def with_reasoning(self, choice: dict, reasoning: str) -> dict:
        """A whole answer's choice with the thinking added."""
        return choice

    def opening_choice(self) -> dict | None:
        """A chunk's choice sent before any token, or None."""
        return None

    def whole(self, body: Any, req: Request, created: int, model_id: str, choice: dict) -> Any:
        """A whole answer's body: OpenAI's object with its one choice (the Responses and Messages
        families translate it into their shapes)."""
        return answer(req, object_name=self.object_name, created=created, model_id=model_id, choice=choice)

    def frames(self, body: Any, req: Request, created: int, model_id: str) -> "StreamFrames":
        """How a stream's chunks go on the wire (the Responses and Messages families translate
        the same chunks into their typed events)."""
        return StreamFrames()

    def body_from(self, raw: bytes) -> Any:
        """The validated request body (the Responses and Messages families translate theirs into
        a chat body here); ``Rejected`` for a bad one."""
        return parse_body(raw, self.body_type)

    # --- the path ------------------------------------------------------------------------------
    def parse(self, raw: bytes) -> tuple[Any, list[int], Any, str | None]:
        """JSON → validated body → prompt tokens. CPU-bound (a large body, a long template, a
        long prompt), so it runs on a worker thread and the event loop keeps answering."""
        body = self.body_from(raw)
        try:
            tokens, audit_prompt = self.prompt_tokens(body)
        except (TemplateError, ValueError, RecursionError) as exc:
            message = "the messages are nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise Rejected(400, message, code="invalid_prompt", audit_error="bad prompt") from None
        return body, tokens, audit_prompt, self.grammar(body)

    async def handle(self, request: HttpRequest) -> Any:
        from fastapi.responses import Response, StreamingResponse

        state, edge, endpoint = self.state, self.edge, self.endpoint
        audit = edge.audit
        started, key_id, denied = edge.arrive(request, endpoint)
        if denied is not None:
            return denied
        if state.status != "ok" or state.scheduler is None:
            audit(key_id, endpoint, 503, started, error="not ready")
            return edge.not_ready()
        parsed, refused = await edge.read_parsed(request, self.parse, key_id, endpoint, started)
        if refused is not None:
            return refused
        body, tokens, audit_prompt, grammar = parsed
        sched, cfg = state.scheduler, state.served_config
        if not tokens:
            audit(key_id, endpoint, 400, started, error="empty prompt")
            return error_response(400, "the prompt is empty", param="prompt", code="invalid_prompt")
        limit = cfg.slot_ctx
        if len(tokens) >= limit:
            audit(key_id, endpoint, 400, started, error="prompt too long")
            return error_response(400, f"the prompt has {len(tokens)} tokens; this server's limit per request is "
                                       f"{limit} tokens (prompt + completion, n_ctx {cfg.n_ctx} / {cfg.parallel} "
                                       "slots)", param=self.prompt_param, code="context_length_exceeded")
        wanted = self.max_tokens_wanted(body) or cfg.max_tokens_cap
        max_tokens = max(1, min(wanted, cfg.max_tokens_cap, limit - len(tokens)))
        events: asyncio.Queue = asyncio.Queue()
        # runs on the event loop: the scheduler hands events over through deliver()
        try:
            params = sampling_params(body, max_tokens, state.runtime.n_vocab, grammar, self.grammar_triggers(body))
        except ValueError as exc:
            audit(key_id, endpoint, 400, started, error="invalid request")
            return error_response(400, str(exc), param="logit_bias", code="invalid_value")
        req = Request(f"{self.id_prefix}-{uuid.uuid4().hex[:24]}", tokens, params, events.put_nowait,
                      **self.request_options(body))
        try:
            sched.submit(req)
        except QueueFull as exc:
            audit(key_id, endpoint, 429, started, error="queue full")
            return error_response(429, f"server busy: {exc.message}; retry shortly", type_="rate_limit_error",
                                  code=exc.code, headers={"Retry-After": str(RETRY_AFTER_S)})
        created = int(time.time())
        model_id = cfg.served_name
        reader = self.reader(body)
        shape_logprobs = self.logprobs(body)
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            return StreamingResponse(
                self._stream(req, events, sched, created=created, model_id=model_id, include_usage=include_usage,
                             reader=reader, shape_logprobs=shape_logprobs,
                             frames=self.frames(body, req, created, model_id),
                             on_end=lambda status, text, err: audit(key_id, endpoint, status, started, req,
                                                                     audit_prompt, text, err)),
                media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        parts: list[str] = []
        thoughts: list[str] = []
        logprobs: list[tuple] = []
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
                elif kind == "reasoning":
                    thoughts.append(ev[1])
                elif kind == "logprobs":
                    logprobs.append(ev[1])
                elif kind == "done":
                    break
                elif kind == "gone":
                    audit(key_id, endpoint, 499, started, req, audit_prompt, "".join(parts), "client gone")
                    return Response(status_code=499)
                else:
                    finished = True
                    audit(key_id, endpoint, 500, started, req, audit_prompt, "".join(parts), ev[1])
                    return error_response(500, ev[1], type_="server_error", code="engine_error")
            finished = True
        finally:
            watcher.cancel()
            if not finished:  # the client went away, or this handler was cancelled (shutdown)
                sched.cancel(req)
        text = "".join(parts)
        audit(key_id, endpoint, 200, started, req, audit_prompt, text)
        choice = self.choice(text, req.finish_reason, reader)
        if req.reasoning is not None:
            choice = self.with_reasoning(choice, "".join(thoughts))
        if shape_logprobs is not None:
            choice["logprobs"] = shape_logprobs(logprobs)
        return self.whole(body, req, created, model_id, choice)

    async def _stream(self, req: Request, events: asyncio.Queue, sched: Scheduler, *, created: int,
                      model_id: str, include_usage: bool, reader: Any,
                      on_end: Callable[[int, str, str | None], None],
                      shape_logprobs: Callable[[list[tuple]], dict] | None = None,
                      frames: "StreamFrames | None" = None) -> AsyncIterator[bytes]:
        """SSE chunks. Tokens that arrived together are sent as one chunk; a client that goes
        away cancels this generator, and ``finally`` tells the loop to free the slot. Token
        log-probabilities ride on the first chunk sent after their tokens (text held back by a
        reader or a stop string waits, and its logprobs with it)."""
        frames = frames or StreamFrames()
        base = {"id": req.id, "object": self.chunk_object_name, "created": created, "model": model_id}
        pending: list[tuple] = []  # logprobs entries not yet sent

        def chunk(choice: dict) -> bytes:
            if shape_logprobs is not None and pending:
                choice = {**choice, "logprobs": shape_logprobs(pending)}
                pending.clear()
            return frames.chunk({**base, "choices": [choice]})

        parts: list[str] = []
        finished = False
        status, error = 200, None
        try:
            opening = self.opening_choice()
            if opening is not None:
                yield frames.chunk({**base, "choices": [opening]})
            while True:
                ev = await events.get()
                texts: list[str] = []
                thoughts: list[str] = []  # a step's thinking comes before its answer text
                done = None
                while True:
                    kind = ev[0]
                    if kind == "text":
                        texts.append(ev[1])
                    elif kind == "reasoning":
                        thoughts.append(ev[1])
                    elif kind == "logprobs":
                        pending.append(ev[1])
                    else:
                        done = ev
                        break
                    try:
                        ev = events.get_nowait()
                    except asyncio.QueueEmpty:
                        break
                if thoughts:
                    yield chunk(self.reasoning_choice("".join(thoughts)))
                if texts:
                    text = "".join(texts)
                    parts.append(text)
                    choice = self.chunk_choice(text, None, reader)
                    if choice is not None:
                        yield chunk(choice)
                if done is None:
                    continue
                finished = True
                if done[0] == "error":
                    status, error = 500, done[1]
                    yield frames.error(done[1])
                else:
                    yield chunk(self.chunk_choice(None, done[1], reader))
                    if include_usage:
                        yield frames.chunk({**base, "choices": [], "usage": usage(req)})
                yield frames.end()
                return
        finally:
            if not finished:
                sched.cancel(req)
                status, error = 499, "client gone"
            on_end(status, "".join(parts), error)


class StreamFrames:
    """A stream's chunks on the wire, OpenAI's way: each chunk one ``data:`` event, an engine
    error as ``{"error": …}``, then ``data: [DONE]``."""

    def chunk(self, obj: dict) -> bytes:
        return sse(obj)

    def error(self, message: str) -> bytes:
        return sse({"error": {"message": message, "type": "server_error", "code": "engine_error"}})

    def end(self) -> bytes:
        return SSE_DONE


async def _watch_disconnect(receive: Callable[[], Any], put: Callable[[Event], None]) -> None:
    """Wait for ``http.disconnect``. The body has been read, so the server's next ASGI
    message for this request is the disconnect (uvicorn sends nothing else)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            put(("gone",))
            return
