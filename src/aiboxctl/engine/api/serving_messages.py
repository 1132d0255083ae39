"""``/v1/messages``: Anthropic's Messages API as a thin translation onto the chat path. The body
becomes a chat request (protocol_messages), generation is chat's, and what chat would answer is
reshaped on the way out: a whole chat choice into a message with content blocks (thinking, text,
tool_use) and ``stop_reason``, a stream's chat chunks into Anthropic's events, and every error —
refused at the door, in validation or by the engine — into Anthropic's error shape."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request as HttpRequest

from aiboxctl.engine.api.protocol import sse_event
from aiboxctl.engine.api.protocol_messages import (
    MessagesBody, anthropic_error, messages_usage, stop_reason,
)
from aiboxctl.engine.api.serving import StreamFrames
from aiboxctl.engine.api.serving_responses import TranslatedChat, TranslatedServing

_KEEP_HEADERS = ("retry-after", "www-authenticate")


class MessagesServing(TranslatedServing):
    endpoint = "messages"
    body_type = MessagesBody
    id_prefix = "msg"
    prompt_param = "messages"

    async def handle(self, request: HttpRequest) -> Any:
        """Chat's path; an error answer (OpenAI's shape) is given Anthropic's shape."""
        from fastapi.responses import JSONResponse

        response = await super().handle(request)
        status = getattr(response, "status_code", 200)
        if status < 400 or not isinstance(response, JSONResponse):
            return response
        try:
            message = json.loads(response.body)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {status}"
        headers = {k: v for k, v in response.headers.items() if k in _KEEP_HEADERS}
        return JSONResponse(anthropic_error(status, message), status_code=status, headers=headers)

    def whole(self, body: TranslatedChat, req: Any, created: int, model_id: str, choice: dict) -> dict:
        msg = choice["message"]
        content: list[dict] = []
        if msg.get("reasoning_content"):
            content.append({"type": "thinking", "thinking": msg["reasoning_content"], "signature": ""})
        if msg.get("content"):
            content.append({"type": "text", "text": msg["content"]})
        for call in msg.get("tool_calls") or ():
            fn = call["function"]
            content.append({"type": "tool_use", "id": call["id"], "name": fn["name"],
                            "input": json.loads(fn["arguments"])})  # a JSON object: tools.base.call made it
        return {"id": req.id, "type": "message", "role": "assistant", "model": model_id, "content": content,
                "stop_reason": stop_reason(choice["finish_reason"], req.stop_sequence),
                "stop_sequence": req.stop_sequence, "usage": messages_usage(req)}

    def frames(self, body: TranslatedChat, req: Any, created: int, model_id: str) -> "MessagesFrames":
        return MessagesFrames(req, model_id)


class MessagesFrames(StreamFrames):
    """Chat chunks → Anthropic's stream: ``message_start``; then one content block at a time —
    thinking (``thinking_delta``), text (``text_delta``), each tool call (``tool_use`` with
    ``input_json_delta``) — each opened with ``content_block_start`` and closed with
    ``content_block_stop`` when another kind begins; ``message_delta`` with the stop reason and
    the usage; ``message_stop``."""

    def __init__(self, req: Any, model_id: str) -> None:
        self.req, self.model_id = req, model_id
        self.started = False
        self.blocks = 0  # blocks opened so far
        self.open: str | None = None  # the open block's kind
        self.finish: str | None = None

    def _start(self) -> bytes:
        if self.started:
            return b""
        self.started = True
        message = {"id": self.req.id, "type": "message", "role": "assistant", "model": self.model_id, "content": [],
                   "stop_reason": None, "stop_sequence": None,
                   "usage": {**messages_usage(self.req), "output_tokens": 0}}
        return sse_event("message_start", {"message": message})

    def _close(self) -> bytes:
        if self.open is None:
            return b""
        self.open = None
        return sse_event("content_block_stop", {"index": self.blocks - 1})

    def _open(self, kind: str, block: dict) -> bytes:
        out = self._close()
        self.open = kind
        self.blocks += 1
        return out + sse_event("content_block_start", {"index": self.blocks - 1, "content_block": block})

    def _delta(self, delta: dict) -> bytes:
        return sse_event("content_block_delta", {"index": self.blocks - 1, "delta": delta})

    def chunk(self, obj: dict) -> bytes:
        out = self._start()
        for choice in obj.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                if self.open != "thinking":
                    out += self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
                out += self._delta({"type": "thinking_delta", "thinking": delta["reasoning_content"]})
            if delta.get("content"):
                if self.open != "text":
                    out += self._open("text", {"type": "text", "text": ""})
                out += self._delta({"type": "text_delta", "text": delta["content"]})
            for part in delta.get("tool_calls") or ():
                fn = part.get("function") or {}
                if "id" in part:
                    out += self._open("tool_use", {"type": "tool_use", "id": part["id"], "name": fn.get("name", ""),
                                                   "input": {}})
                if fn.get("arguments") and self.open == "tool_use":
                    out += self._delta({"type": "input_json_delta", "partial_json": fn["arguments"]})
            if choice.get("finish_reason") is not None:
                self.finish = choice["finish_reason"]
        return out

    def end(self) -> bytes:
        req = self.req
        delta = {"stop_reason": stop_reason(self.finish, req.stop_sequence), "stop_sequence": req.stop_sequence}
        return (self._start() + self._close()
                + sse_event("message_delta", {"delta": delta, "usage": messages_usage(req)})
                + sse_event("message_stop", {}))

    def error(self, message: str) -> bytes:
        return self._start() + sse_event("error", anthropic_error(500, message))
