"""``/v1/responses``: OpenAI's Responses API as a thin translation onto the chat path. The body
becomes a chat request (protocol_responses), generation is chat's — template, tools, grammar,
reasoning split, the decode loop — and what chat would answer is reshaped on the way out: a whole
chat choice into output items (reasoning, message, function_call), a stream's chat chunks into
the Responses API's typed events."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import PrivateAttr, ValidationError

from aiboxctl.engine.api.edge import Rejected, parse_body
from aiboxctl.engine.api.protocol import ChatBody, sse_event, validation_message
from aiboxctl.engine.api.protocol_responses import (
    ResponsesBody, function_call_item, message_item, reasoning_item, response_object, response_usage,
)
from aiboxctl.engine.api.serving import StreamFrames
from aiboxctl.engine.api.serving_chat import ChatServing


class TranslatedChat(ChatBody):
    """A chat body made from another API's request, which it keeps for the answer's shape."""

    _source: Any = PrivateAttr(None)


class TranslatedServing(ChatServing):
    """Chat's serving for a body of another API (``body_type``, a TranslatedBody): the body is
    parsed in its own shape, turned into a chat request and validated as one; a field either
    refuses is a 400 naming ``prompt_param``'s place."""

    def body_from(self, raw: bytes) -> TranslatedChat:
        source = parse_body(raw, self.body_type)
        try:
            body = TranslatedChat.model_validate(source.chat_request())
        except ValueError as exc:  # chat_request's own refusal, or chat's validation of what it made
            message = validation_message(exc)[0] if isinstance(exc, ValidationError) else str(exc)
            raise Rejected(400, message, param=self.prompt_param, code="invalid_value",
                           audit_error="invalid request") from None
        body._source = source
        return body


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def _terminal_status(finish_reason: str | None) -> str:
    return "incomplete" if finish_reason == "length" else "completed"


class ResponsesServing(TranslatedServing):
    endpoint = "responses"
    body_type = ResponsesBody
    id_prefix = "resp"
    prompt_param = "input"

    def whole(self, body: TranslatedChat, req: Any, created: int, model_id: str, choice: dict) -> dict:
        msg = choice["message"]
        output: list[dict] = []
        if msg.get("reasoning_content"):
            output.append(reasoning_item(_new_id("rs"), msg["reasoning_content"]))
        if msg.get("content") or not msg.get("tool_calls"):
            output.append(message_item(_new_id("msg"), msg.get("content") or ""))
        for call in msg.get("tool_calls") or ():
            fn = call["function"]
            output.append(function_call_item(_new_id("fc"), call["id"], fn["name"], fn["arguments"]))
        return response_object(body._source, req.id, created, model_id, output,
                               _terminal_status(choice["finish_reason"]), response_usage(req))

    def frames(self, body: TranslatedChat, req: Any, created: int, model_id: str) -> "ResponsesFrames":
        return ResponsesFrames(body._source, req, created, model_id)


class ResponsesFrames(StreamFrames):
    """Chat chunks → the Responses API's events. One output item is open at a time: thinking
    opens a reasoning item, answer text a message item, each tool call a function_call item;
    a new kind closes the open one (its ``*.done`` events and ``output_item.done``). The stream
    opens with ``response.created``/``response.in_progress`` and ends with ``response.completed``
    carrying every item, the status (``incomplete`` at the token limit) and the usage."""

    def __init__(self, source: ResponsesBody, req: Any, created: int, model_id: str) -> None:
        self.source, self.req, self.created, self.model_id = source, req, created, model_id
        self.seq = 0
        self.output: list[dict] = []  # the items, done or open
        self.open: dict | None = None  # the open item
        self.calls: dict[int, int] = {}  # chat's tool_calls index → output index
        self.finish: str | None = None

    def _event(self, kind: str, **payload: Any) -> bytes:
        out = sse_event(kind, {**payload, "sequence_number": self.seq})
        self.seq += 1
        return out

    def _response(self, status: str, usage: dict | None = None, error: dict | None = None) -> dict:
        return response_object(self.source, self.req.id, self.created, self.model_id, self.output, status, usage,
                               error)

    def _close(self) -> bytes:
        item, self.open = self.open, None
        if item is None:
            return b""
        index = self.output.index(item)
        item["status"] = "completed"
        out = b""
        if item["type"] in ("message", "reasoning"):
            part = item["content"][0]
            kind = "output_text" if item["type"] == "message" else "reasoning_text"
            out += self._event(f"response.{kind}.done", item_id=item["id"], output_index=index, content_index=0,
                               text=part["text"])
            out += self._event("response.content_part.done", item_id=item["id"], output_index=index,
                               content_index=0, part=part)
        else:
            out += self._event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                               name=item["name"], arguments=item["arguments"])
        return out + self._event("response.output_item.done", output_index=index, item=item)

    def _text(self, kind: str, text: str) -> bytes:
        """Thinking (``reasoning``) or answer (``message``) text into the open item of that kind."""
        out = b""
        if self.open is None or self.open["type"] != kind:
            out += self._close()
            make = message_item if kind == "message" else reasoning_item
            item = make(_new_id("msg" if kind == "message" else "rs"), "", status="in_progress")
            item["content"] = []
            self.output.append(item)
            self.open = item
            index = len(self.output) - 1
            out += self._event("response.output_item.added", output_index=index, item=item)
            part = ({"type": "output_text", "text": "", "annotations": [], "logprobs": []} if kind == "message"
                    else {"type": "reasoning_text", "text": ""})
            item["content"].append(part)
            out += self._event("response.content_part.added", item_id=item["id"], output_index=index,
                               content_index=0, part=part)
        item = self.open
        item["content"][0]["text"] += text
        delta = "response.output_text.delta" if kind == "message" else "response.reasoning_text.delta"
        extra = {"logprobs": []} if kind == "message" else {}
        return out + self._event(delta, item_id=item["id"], output_index=self.output.index(item), content_index=0,
                                 delta=text, **extra)

    def _call(self, part: dict) -> bytes:
        out = b""
        fn = part.get("function") or {}
        if "id" in part:  # a new call: its item, then its arguments so far
            out += self._close()
            item = function_call_item(_new_id("fc"), part["id"], fn.get("name", ""), "", status="in_progress")
            self.output.append(item)
            self.open = item
            self.calls[part["index"]] = len(self.output) - 1
            out += self._event("response.output_item.added", output_index=len(self.output) - 1, item=item)
        index = self.calls.get(part["index"])
        args = fn.get("arguments") or ""
        if index is None or not args:
            return out
        item = self.output[index]
        item["arguments"] += args
        return out + self._event("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                                 delta=args)

    def chunk(self, obj: dict) -> bytes:
        out = b""
        if self.seq == 0:
            out += self._event("response.created", response=self._response("in_progress"))
            out += self._event("response.in_progress", response=self._response("in_progress"))
        for choice in obj.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                out += self._text("reasoning", delta["reasoning_content"])
            if delta.get("content"):
                out += self._text("message", delta["content"])
            for part in delta.get("tool_calls") or ():
                out += self._call(part)
            if choice.get("finish_reason") is not None:
                self.finish = choice["finish_reason"]
        return out

    def end(self) -> bytes:
        out = self._close()
        if not self.output:  # an empty answer is still a message
            out += self._text("message", "") + self._close()
        # response.completed whatever the status (incomplete at the token limit, as vLLM does), not
        # OpenAI's response.incomplete: the openai SDK's stream helper takes its final response from
        # response.completed alone, and get_final_response() raises after response.incomplete
        # (openai 2.54 and 3.57; openai-python#3538 open). tests/test_responses_incomplete.py checks it
        status = _terminal_status(self.finish)
        return out + self._event("response.completed", response=self._response(status, response_usage(self.req)))

    def error(self, message: str) -> bytes:
        error = {"code": "server_error", "message": message}
        return (self._event("error", code="server_error", message=message, param=None)
                + self._event("response.failed", response=self._response("failed", response_usage(self.req), error)))
