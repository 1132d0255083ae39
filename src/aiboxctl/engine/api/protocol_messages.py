"""Anthropic's Messages API (``POST /v1/messages``), both ways: the request body (validated with
pydantic, then translated into the chat request the engine serves), the message that goes back
(content blocks text / thinking / tool_use, ``stop_reason``), its stream events, and Anthropic's
error shape ``{"type": "error", "error": {"type", "message"}}``.

Every field of the request is honoured or refused (400 naming it); unknown fields are refused too."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from aiboxctl.engine.api.protocol import MAX_STOPS, TranslatedBody

UNSUPPORTED = {
    "mcp_servers": "MCP servers are not supported",
    "container": "containers are not supported",
    "context_management": "context_management is not supported",
}


class CacheControl(BaseModel):
    """A prompt-caching hint: accepted and needed by no one here (the engine reuses every
    cached prefix by itself)."""
    model_config = ConfigDict(extra="forbid")
    type: Literal["ephemeral"]
    ttl: Optional[Literal["5m", "1h"]] = None


class TextBlock(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str
    cache_control: Optional[CacheControl] = None
    citations: Optional[list[Any]] = Field(None, max_length=0)


class ToolUseBlock(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]
    cache_control: Optional[CacheControl] = None


class ToolResultBlock(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["tool_result"]
    tool_use_id: str
    content: Union[str, list[TextBlock], None] = None
    is_error: bool = False
    cache_control: Optional[CacheControl] = None

    def text(self) -> str:
        body = self.content if isinstance(self.content, str) else "".join(b.text for b in self.content or ())
        return f"Error: {body}" if self.is_error else body


class ThinkingBlock(BaseModel):
    """An earlier turn's thinking: accepted and not fed back (the thinking models' rule)."""
    model_config = ConfigDict(extra="forbid")
    type: Literal["thinking", "redacted_thinking"]
    thinking: Optional[str] = None
    signature: Optional[str] = None
    data: Optional[str] = None


Block = Annotated[Union[TextBlock, ToolUseBlock, ToolResultBlock, ThinkingBlock], Field(discriminator="type")]


class AnthropicMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["user", "assistant"]
    content: Union[list[Block], str]  # the list first: its errors name the block


class AnthropicTool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Optional[Literal["custom"]] = None  # server tools (web search, code execution…) are not offered
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: Optional[str] = None
    input_schema: dict[str, Any]
    cache_control: Optional[CacheControl] = None


class AnthropicToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["auto", "any", "tool", "none"]
    name: Optional[str] = None
    disable_parallel_tool_use: bool = False

    @model_validator(mode="after")
    def _name_for_tool(self) -> "AnthropicToolChoice":
        if (self.type == "tool") != (self.name is not None):
            raise ValueError("tool_choice: name is given with type 'tool', and only then")
        return self


class ThinkingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["enabled", "disabled"]
    budget_tokens: Optional[int] = Field(None, ge=1)

    @model_validator(mode="after")
    def _budget_when_enabled(self) -> "ThinkingConfig":
        if self.type == "enabled" and self.budget_tokens is None:
            raise ValueError("thinking: type 'enabled' needs budget_tokens")
        return self


class Metadata(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: Optional[str] = None  # a label, as chat's user


class MessagesBody(TranslatedBody):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    unsupported = UNSUPPORTED
    model: Optional[str] = None
    max_tokens: int = Field(ge=1)
    messages: list[AnthropicMessage] = Field(min_length=1)
    system: Union[str, list[TextBlock], None] = None
    temperature: float = Field(1.0, ge=0.0, le=1.0)  # Anthropic's range
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: Optional[int] = Field(None, ge=0)
    stop_sequences: Optional[list[str]] = Field(None, max_length=MAX_STOPS)
    stream: bool = False
    metadata: Optional[Metadata] = None
    tools: Optional[list[AnthropicTool]] = Field(None, max_length=128)
    tool_choice: Optional[AnthropicToolChoice] = None
    thinking: Optional[ThinkingConfig] = None
    service_tier: Optional[Literal["auto", "standard_only"]] = None

    def chat_request(self) -> dict[str, Any]:
        """The chat request this one is (validated as a chat body by the caller)."""
        chat: dict[str, Any] = {"messages": chat_messages(self.system, self.messages), "model": self.model,
                                "max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p,
                                "stream": self.stream}
        if self.top_k is not None:
            chat["top_k"] = self.top_k
        if self.stop_sequences:
            chat["stop"] = self.stop_sequences
        if self.metadata is not None and self.metadata.user_id is not None:
            chat["user"] = self.metadata.user_id
        if self.tools:
            chat["tools"] = [{"type": "function", "function": {
                "name": t.name, "parameters": t.input_schema,
                **({"description": t.description} if t.description is not None else {})}} for t in self.tools]
        choice = self.tool_choice
        if choice is not None:
            chat["tool_choice"] = ({"type": "function", "function": {"name": choice.name}} if choice.type == "tool"
                                   else {"auto": "auto", "any": "required", "none": "none"}[choice.type])
            chat["parallel_tool_calls"] = not choice.disable_parallel_tool_use
            if not self.tools and choice.type in ("auto", "none"):
                del chat["tool_choice"]  # chat's tool_choice needs tools; without them these say nothing
        if self.thinking is not None:
            if self.thinking.type == "enabled":
                chat["thinking_budget_tokens"] = self.thinking.budget_tokens
            else:
                chat["enable_thinking"] = False
        return chat


def chat_messages(system: Union[str, list[TextBlock], None], messages: list[AnthropicMessage]) -> list[dict]:
    """``system`` and the messages as chat messages: an assistant turn's tool_use blocks become its
    tool_calls (arguments as a JSON string); a user turn's tool_result blocks become tool messages,
    in their place among its text; thinking blocks are dropped."""
    out: list[dict[str, Any]] = []
    if system:
        out.append({"role": "system", "content": system if isinstance(system, str)
                    else "".join(b.text for b in system)})
    for m in messages:
        blocks = [TextBlock(type="text", text=m.content)] if isinstance(m.content, str) else m.content
        if m.role == "assistant":
            text = "".join(b.text for b in blocks if isinstance(b, TextBlock))
            calls = [{"id": b.id, "type": "function",
                      "function": {"name": b.name, "arguments": json.dumps(b.input, ensure_ascii=False)}}
                     for b in blocks if isinstance(b, ToolUseBlock)]
            out.append({"role": "assistant", "content": text, **({"tool_calls": calls} if calls else {})})
            continue
        texts: list[str] = []
        for b in blocks:
            if isinstance(b, ToolResultBlock):
                if texts:
                    out.append({"role": "user", "content": "".join(texts)})
                    texts = []
                out.append({"role": "tool", "tool_call_id": b.tool_use_id, "content": b.text()})
            elif isinstance(b, ToolUseBlock):
                raise ValueError("messages: tool_use blocks belong to assistant turns")
            elif isinstance(b, TextBlock):
                texts.append(b.text)
        if texts or not blocks:
            out.append({"role": "user", "content": "".join(texts)})
    return out


# --- what goes back ------------------------------------------------------------------------

def stop_reason(finish_reason: str | None, stop_sequence: str | None) -> str:
    if finish_reason == "length":
        return "max_tokens"
    if finish_reason == "tool_calls":
        return "tool_use"
    return "stop_sequence" if stop_sequence is not None else "end_turn"


def messages_usage(req: Any) -> dict:
    return {"input_tokens": req.prompt_tokens, "output_tokens": req.completion_tokens,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}


ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error"}


def anthropic_error(status: int, message: str) -> dict:
    return {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message}}
