"""The OpenAI wire format, both ways: request bodies (validated with pydantic) and the shapes of
what goes back — answers and their choices (whole and streamed), usage, errors, SSE framing.
The serving module of each endpoint family decides which shape carries what."""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

MAX_STOPS = 16
LOGIT_BIAS = 100.0  # OpenAI's range for a logit_bias value: -100 (ban) .. 100 (force)
RETRY_AFTER_S = 1
MAX_LOGPROBS = 20  # alternatives per token (OpenAI's cap for top_logprobs); more is a 400


# --- request bodies ------------------------------------------------------------------------

class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class GenerationBody(BaseModel):
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
    stream_options: Optional[StreamOptions] = None
    n: int = Field(1, ge=1, le=1)
    ignore_eos: bool = False  # llama-server's extension: generate max_tokens whatever the model says
    user: Optional[str] = None

    @property
    def logprobs_wanted(self) -> int | None:
        """Alternatives per token to report with each token's log-probability; None: none."""
        return None

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> "GenerationBody":
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: Optional[str] = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[TextPart], None] = None

    def flat(self) -> dict[str, Any]:
        content = self.content
        if isinstance(content, list):
            if any(p.type != "text" for p in content):
                raise ValueError("only text content parts are supported")
            content = "".join(p.text or "" for p in content)
        role = "system" if self.role == "developer" else self.role
        return {**(self.model_extra or {}), "role": role, "content": content or ""}


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[dict[str, Any]] = None


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None
    strict: Optional[bool] = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: FunctionDef


class TranslatedBody(BaseModel):
    """A body of another API translated onto the chat path (Responses, Messages): the fields it
    cannot honour are named in ``unsupported`` (field → why) and refused with a 400 naming them,
    before any other check, so a client never believes a setting took effect."""
    unsupported: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, why in cls.unsupported.items():
                if data.get(name) is not None:
                    raise ValueError(f"{name} is not supported: {why}")
        return data


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


class ThinkingControls(BaseModel):
    """A chat request's say over a thinking model (engine/reasoning): thinking off, a budget in
    tokens (``thinking_budget_tokens``, llama-server's ``reasoning_budget`` with -1 for none, or
    ``reasoning_effort``), the chat template's variables (Qwen3's ``enable_thinking``). A model
    that does not think ignores them."""

    chat_template_kwargs: Optional[dict[str, Any]] = None
    enable_thinking: Optional[bool] = None  # as SiliconFlow and Qwen's own API take it
    reasoning_effort: Optional[Literal["none", "minimal", "low", "medium", "high"]] = None
    thinking_budget_tokens: Optional[int] = Field(None, ge=0)
    reasoning_budget: Optional[int] = Field(None, ge=-1)
    _reasoning: Any = PrivateAttr(None)  # the request's reasoning decision, set with the prompt
    _think_end: Optional[str] = PrivateAttr(None)  # the end-of-thinking tag when this reply thinks
    _triggers: tuple = PrivateAttr(())  # the lazy grammar's triggers, set with the grammar

    @field_validator("chat_template_kwargs")
    @classmethod
    def _no_reserved_names(cls, v: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
        taken = sorted(set(v or ()) & {"messages", "add_generation_prompt", "bos_token", "eos_token", "tools"})
        if taken:
            raise ValueError(f"{taken[0]!r} is set by the server, not by chat_template_kwargs")
        return v


class ChatBody(ThinkingControls, GenerationBody):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    tools: Optional[list[Tool]] = Field(None, max_length=128)
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoice, None] = None
    parallel_tool_calls: bool = True
    response_format: Optional[ResponseFormat] = None
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS)

    @model_validator(mode="after")
    def _tools_consistent(self) -> "ChatBody":
        names = [t.function.name for t in self.tools or ()]
        if len(set(names)) != len(names):
            raise ValueError("tools: two functions have the same name")
        choice = self.tool_choice
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise ValueError(f"tool_choice names {choice.function.name!r}, which is not among tools")
        if choice == "required" and not names:
            raise ValueError("tool_choice 'required' needs tools")
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    @property
    def logprobs_wanted(self) -> int | None:
        """Alternatives per token to report (0: the chosen token's alone); None: no logprobs."""
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionBody(GenerationBody):
    prompt: Union[str, list[str], list[int]]
    echo: bool = False
    logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS)  # the legacy field: alternatives per token

    @property
    def logprobs_wanted(self) -> int | None:
        return self.logprobs

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, v: bool) -> bool:
        if v:
            raise ValueError("echo is not supported by this server")
        return v


def validation_message(exc: ValidationError) -> tuple[str, str | None]:
    """The first validation error as one line, and the top-level field it concerns."""
    err = exc.errors()[0]
    loc = ".".join(str(x) for x in err.get("loc", ()))
    return (f"{loc}: {err.get('msg')}" if loc else str(err.get("msg"))), (str(err["loc"][0]) if err.get("loc") else None)


# --- what goes back ------------------------------------------------------------------------

def error_response(status: int, message: str, *, type_: str = "invalid_request_error", code: str | None = None,
                   param: str | None = None, headers: dict[str, str] | None = None) -> Any:
    """OpenAI's error object as a JSON response."""
    from fastapi.responses import JSONResponse

    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def answer(req: Any, *, object_name: str, created: int, model_id: str, choice: dict) -> dict:
    """A whole (non-streamed) answer with its one choice."""
    return {"id": req.id, "object": object_name, "created": created, "model": model_id,
            "choices": [choice], "usage": usage(req)}


def chat_choice(text: str, finish_reason: str | None) -> dict:
    return {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
            "finish_reason": finish_reason}


def chat_delta_choice(text: str | None, finish_reason: str | None) -> dict:
    """A streamed chat chunk's choice: new text, or (``text`` None) the closing chunk."""
    delta = {"content": text} if text is not None else {}
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def chat_reasoning_choice(text: str) -> dict:
    """A streamed chat chunk's choice carrying thinking (the DeepSeek API's shape)."""
    return {"index": 0, "delta": {"content": None, "reasoning_content": text}, "logprobs": None,
            "finish_reason": None}


def chat_role_choice() -> dict:
    """The first streamed chat chunk's choice, before any token: the role."""
    return {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}


def text_choice(text: str | None, finish_reason: str | None) -> dict:
    """A completion's choice, whole or streamed (``text`` None: the closing chunk)."""
    return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}


def logprob_token(piece: bytes) -> str:
    """A token's text as OpenAI writes it in logprobs: the text, or ``bytes:\\xe4\\xbd`` for a
    token that is part of a character (its bytes are in ``bytes``)."""
    try:
        return piece.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in piece)


def chat_logprobs(entries: list[tuple]) -> dict:
    """``choices[].logprobs`` of a chat answer (or chunk) for the tokens in ``entries`` — each
    ``(bytes, logprob, ((bytes, logprob), …))`` from the decode loop."""
    def one(piece: bytes, lp: float) -> dict:
        return {"token": logprob_token(piece), "logprob": lp, "bytes": list(piece)}

    return {"content": [{**one(p, lp), "top_logprobs": [one(q, lq) for q, lq in top]} for p, lp, top in entries],
            "refusal": None}


class LegacyLogprobs:
    """``choices[].logprobs`` of a completion (the legacy shape: parallel lists, the alternatives
    as ``{token: logprob}``), one per request: ``text_offset`` runs on across a stream's chunks."""

    def __init__(self) -> None:
        self.offset = 0

    def __call__(self, entries: list[tuple]) -> dict:
        tokens, offsets = [], []
        for piece, _, _ in entries:
            text = piece.decode("utf-8", errors="replace")
            tokens.append(logprob_token(piece))
            offsets.append(self.offset)
            self.offset += len(text)
        return {"tokens": tokens, "token_logprobs": [lp for _, lp, _ in entries],
                "top_logprobs": [{logprob_token(q): lq for q, lq in top} for _, _, top in entries],
                "text_offset": offsets}


def usage(req: Any) -> dict:
    out = {"prompt_tokens": req.prompt_tokens, "completion_tokens": req.completion_tokens,
           "total_tokens": req.prompt_tokens + req.completion_tokens}
    if getattr(req, "reasoning", None) is not None:  # a thinking model: how much of it was thinking
        out["completion_tokens_details"] = {"reasoning_tokens": req.reasoning_tokens}
    return out


def sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def sse_event(kind: str, payload: dict) -> bytes:
    """One typed SSE event (the Responses API's and Anthropic's streams): ``event: <type>`` and
    its JSON, which carries ``type`` too."""
    data = json.dumps({"type": kind, **payload}, ensure_ascii=False, separators=(",", ":"))
    return f"event: {kind}\ndata: {data}\n\n".encode()


# --- pooled outputs: embeddings and rerank (engine/api/serving_embeddings.py, serving_rerank.py)

MAX_POOLED_INPUTS = 2048  # inputs per embeddings request, documents per rerank request (OpenAI's limit)


class EmbeddingBody(BaseModel):
    """OpenAI's embeddings request. ``input``: a string, a list of strings, a token array or a
    list of token arrays. ``truncate`` (TEI's and llama-server's extension): an input longer than
    the model's context is cut to it instead of refused (400)."""

    model_config = ConfigDict(extra="ignore")
    model: Optional[str] = None
    input: Union[str, list[str], list[int], list[list[int]]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Optional[int] = Field(None, ge=1)
    truncate: bool = False
    user: Optional[str] = None

    @field_validator("input")
    @classmethod
    def _inputs(cls, v: Any) -> Any:
        items = [v] if isinstance(v, str) else v
        if not items:
            raise ValueError("input must not be empty")
        if len(items) > MAX_POOLED_INPUTS and not all(isinstance(x, int) for x in items):
            raise ValueError(f"at most {MAX_POOLED_INPUTS} inputs per request")
        if any((isinstance(x, (str, list)) and not x) for x in items):
            raise ValueError("an input must not be empty")
        return v


class RerankDocument(BaseModel):
    model_config = ConfigDict(extra="ignore")
    text: str


class RerankBody(BaseModel):
    """The Jina/Cohere rerank request (also at /rerank and /v1/reranking): documents as strings
    or ``{"text": ...}``; ``top_n`` results, best first; ``return_documents`` (Jina's default:
    true) echoes each document's text."""

    model_config = ConfigDict(extra="ignore")
    model: Optional[str] = None
    query: str = Field(min_length=1)
    documents: list[Union[str, RerankDocument]] = Field(min_length=1, max_length=MAX_POOLED_INPUTS)
    top_n: Optional[int] = Field(None, ge=1)
    return_documents: bool = True
    truncate: bool = False

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


def embedding_data(index: int, vector: list[float], encoding_format: str) -> dict:
    """One item of an embeddings answer; base64 is the float32 little-endian bytes (OpenAI's)."""
    if encoding_format == "base64":
        import base64
        import struct

        value: Any = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    else:
        value = vector
    return {"object": "embedding", "index": index, "embedding": value}


def pooled_usage(prompt_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
