"""OpenAI's Responses API (``POST /v1/responses``), both ways: the request body (validated with
pydantic, then translated into the chat request the engine serves) and the shapes of what goes
back — the response object with its output items (message, reasoning, function_call) and the
typed SSE events of a stream. Stateless: nothing is stored, every request carries the whole
conversation in ``input``.

Every field of the request is honoured or refused (400 naming it); unknown fields are refused too,
so a client never believes a setting took effect when it did not."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from aiboxctl.engine.api.protocol import FunctionDef, TranslatedBody

# fields of the Responses API this server cannot honour, and why (a 400 names them)
UNSUPPORTED = {
    "previous_response_id": "this server keeps no responses: send the whole conversation in input",
    "conversation": "this server keeps no conversations: send the whole conversation in input",
    "background": "background responses are not supported",
    "prompt": "stored prompts are not supported",
    "top_logprobs": "logprobs are served by /v1/chat/completions",
    "max_tool_calls": "max_tool_calls is not supported",
    "context_management": "context_management is not supported",
}


class ResponseFunctionTool(FunctionDef):
    """Chat's function definition, flat with its ``type`` (the Responses shape)."""
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]


class ResponseNamedTool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    name: str


class ResponseTextFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    name: Optional[str] = None
    schema_: Optional[dict[str, Any]] = Field(None, alias="schema")
    description: Optional[str] = None
    strict: Optional[bool] = None

    @model_validator(mode="after")
    def _schema_for_json_schema(self) -> "ResponseTextFormat":
        if self.type == "json_schema" and self.schema_ is None:
            raise ValueError("text.format json_schema needs a schema")
        return self


class ResponseText(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Optional[ResponseTextFormat] = None
    verbosity: Optional[Literal["medium"]] = None  # the model writes as it writes: only the default


class ResponseStreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_obfuscation: Optional[bool] = None  # accepted: nothing is obfuscated here


class ResponseReasoning(BaseModel):
    model_config = ConfigDict(extra="forbid")
    effort: Optional[Literal["none", "minimal", "low", "medium", "high"]] = None
    summary: None = None  # the thinking is returned whole (reasoning_text), never summarised


class ResponsesBody(TranslatedBody):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, populate_by_name=True)
    unsupported = UNSUPPORTED
    model: Optional[str] = None
    input: Union[str, list[dict[str, Any]]]
    instructions: Optional[str] = None
    tools: Optional[list[ResponseFunctionTool]] = Field(None, max_length=128)
    tool_choice: Union[Literal["none", "auto", "required"], ResponseNamedTool, None] = None
    parallel_tool_calls: bool = True
    text: Optional[ResponseText] = None
    reasoning: Optional[ResponseReasoning] = None
    max_output_tokens: Optional[int] = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stream: bool = False
    stream_options: Optional[ResponseStreamOptions] = None
    store: Optional[Literal[False]] = None  # stateless: a response that asks to be stored is refused
    include: Optional[list[Literal["reasoning.encrypted_content"]]] = Field(None, max_length=0)
    truncation: Optional[Literal["disabled"]] = None  # a prompt too long is a 400, never cut
    metadata: Optional[dict[str, str]] = Field(None, max_length=16)  # echoed back
    user: Optional[str] = None  # labels: change nothing here
    safety_identifier: Optional[str] = None
    prompt_cache_key: Optional[str] = None  # prefixes are reused whatever the key
    service_tier: Optional[Literal["auto", "default"]] = None

    def chat_request(self) -> dict[str, Any]:
        """The chat request this one is (validated as a chat body by the caller): instructions as the system message, the input items as
        messages (a reasoning item is dropped, as a thinking model's earlier thinking is never fed
        back), tools and the text format in chat's shapes. ValueError names the bad item."""
        chat: dict[str, Any] = {"messages": input_messages(self.input, self.instructions),
                                "model": self.model, "temperature": self.temperature, "top_p": self.top_p,
                                "stream": self.stream, "parallel_tool_calls": self.parallel_tool_calls,
                                "user": self.user}
        if self.max_output_tokens is not None:
            chat["max_tokens"] = self.max_output_tokens
        if self.tools:
            chat["tools"] = [{"type": "function", "function": t.model_dump(exclude_none=True, exclude={"type"})}
                             for t in self.tools]
        if isinstance(self.tool_choice, ResponseNamedTool):
            chat["tool_choice"] = {"type": "function", "function": {"name": self.tool_choice.name}}
        elif self.tool_choice is not None:
            chat["tool_choice"] = self.tool_choice
        fmt = self.text.format if self.text is not None else None
        if fmt is not None and fmt.type == "json_schema":
            chat["response_format"] = {"type": "json_schema", "json_schema": {
                "name": fmt.name or "response", "schema": fmt.schema_, "strict": fmt.strict}}
        elif fmt is not None:
            chat["response_format"] = {"type": fmt.type}
        if self.reasoning is not None and self.reasoning.effort is not None:
            chat["reasoning_effort"] = self.reasoning.effort
        return chat


def _text_of(content: Any, where: str) -> str:
    """A message's content (a string, or parts input_text/output_text/refusal) as text."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ValueError(f"{where}.content must be a string or a list of parts")
    out = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
            out.append(part["text"])
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            out.append(part["refusal"])
        elif kind in ("input_image", "input_file", "input_audio"):
            raise ValueError(f"{where}.content[{j}]: {kind} is not supported (this server's models read text)")
        else:
            raise ValueError(f"{where}.content[{j}]: a part must be input_text or output_text with its text")
    return "".join(out)


def input_messages(items: Union[str, list[dict[str, Any]]], instructions: str | None) -> list[dict[str, Any]]:
    """``instructions`` and ``input`` as chat messages. Consecutive function_call items become one
    assistant message's tool_calls; a function_call_output a tool message."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": instructions}] if instructions else []
    if isinstance(items, str):
        return messages + [{"role": "user", "content": items}]
    if not items:
        raise ValueError("input must not be empty")
    for i, item in enumerate(items):
        where = f"input[{i}]"
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise ValueError(f"{where}.role must be user, assistant, system or developer")
            messages.append({"role": role, "content": _text_of(item.get("content"), where)})
        elif kind == "function_call":
            call_id, name, args = item.get("call_id"), item.get("name"), item.get("arguments")
            if not (isinstance(call_id, str) and isinstance(name, str) and isinstance(args, str)):
                raise ValueError(f"{where}: a function_call needs call_id, name and arguments (strings)")
            call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":  # the same turn: its text, its other calls
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(call_id, str):
                raise ValueError(f"{where}: a function_call_output needs its call_id")
            messages.append({"role": "tool", "tool_call_id": call_id,
                             "content": output if isinstance(output, str) else _text_of(output, where)})
        elif kind == "reasoning":
            continue  # an earlier turn's thinking is not fed back
        else:
            raise ValueError(f"{where}: items of type {kind!r} are not supported "
                             "(message, function_call, function_call_output, reasoning)")
    if not messages:
        raise ValueError("input holds no message")
    return messages


# --- what goes back ------------------------------------------------------------------------

def response_usage(req: Any) -> dict:
    return {"input_tokens": req.prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": req.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": req.reasoning_tokens},
            "total_tokens": req.prompt_tokens + req.completion_tokens}


def response_object(body: ResponsesBody, resp_id: str, created: int, model_id: str, output: list[dict],
                    status: str, usage: dict | None, error: dict | None = None) -> dict:
    """The response object (whole, and in the stream's created/completed events)."""
    fmt = body.text.format if body.text is not None and body.text.format is not None else None
    return {
        "id": resp_id, "object": "response", "created_at": created, "status": status, "model": model_id,
        "output": output, "error": error,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
        "parallel_tool_calls": body.parallel_tool_calls, "temperature": body.temperature, "top_p": body.top_p,
        "tool_choice": (body.tool_choice.model_dump() if isinstance(body.tool_choice, ResponseNamedTool)
                        else body.tool_choice or "auto"),
        "tools": [t.model_dump(exclude_none=True) for t in body.tools or ()],
        "text": {"format": fmt.model_dump(exclude_none=True, by_alias=True) if fmt else {"type": "text"}},
        "reasoning": {"effort": body.reasoning.effort if body.reasoning else None, "summary": None},
        "store": False, "truncation": "disabled", "metadata": body.metadata or {}, "user": body.user,
        "usage": usage,
    }


def reasoning_item(item_id: str, text: str, status: str = "completed") -> dict:
    return {"type": "reasoning", "id": item_id, "summary": [],
            "content": [{"type": "reasoning_text", "text": text}], "status": status}


def message_item(item_id: str, text: str, status: str = "completed") -> dict:
    return {"type": "message", "id": item_id, "role": "assistant", "status": status,
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}] if text or
            status == "completed" else []}


def function_call_item(item_id: str, call_id: str, name: str, arguments: str, status: str = "completed") -> dict:
    return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name, "arguments": arguments,
            "status": status}
