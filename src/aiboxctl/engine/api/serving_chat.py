"""``/v1/chat/completions``: messages (and tools) through the model's chat template into prompt
tokens, and the answer as an assistant message (whole) or as deltas (streamed). Which part of what
the model wrote goes where — content, or ``tool_calls`` read by the model family's tool parser
(engine/tools) — is decided here, in ``choice`` and ``chunk_choice``. ``response_format`` and a
required/named ``tool_choice`` become a grammar (engine/structured) the sampler enforces."""

from __future__ import annotations

import logging
from typing import Any

from aiboxctl.engine.api.edge import Rejected
from aiboxctl.engine.api.protocol import (
    ChatBody, NamedToolChoice, chat_choice, chat_logprobs, chat_delta_choice, chat_reasoning_choice, chat_role_choice,
)
from aiboxctl.engine.api.serving import OpenAIServing

log = logging.getLogger("aiboxctl.engine")


class ChatServing(OpenAIServing):
    endpoint = "chat"
    body_type = ChatBody
    id_prefix = "chatcmpl"
    prompt_param = "messages"
    object_name = "chat.completion"
    chunk_object_name = "chat.completion.chunk"

    def _tool_format(self) -> Any:
        from aiboxctl.engine.tools import format_for, template_renders_tools

        spec = self.state.template.spec
        cached = getattr(self, "_fmt", None)
        if cached is None or cached[0] is not spec:
            cached = (spec, format_for(spec.text), template_renders_tools(spec.text))
            self._fmt = cached
        return cached[1], cached[2]

    @staticmethod
    def _tools_on(body: ChatBody) -> bool:
        return bool(body.tools) and body.tool_choice != "none"

    def prompt_tokens(self, body: ChatBody) -> tuple[list[int], Any]:
        from aiboxctl.engine.tools import prepare

        state = self.state
        rt, template = state.runtime, state.template
        messages = [m.flat() for m in body.messages]
        variables = dict(body.chat_template_kwargs or {})
        parser = state.reasoning
        if parser is not None:  # a thinking model: earlier turns' thinking is not fed back
            from aiboxctl.engine.reasoning import Thinking, strip_history, template_kwargs

            thinking = Thinking.from_request(
                effort=body.reasoning_effort,
                budget=body.thinking_budget_tokens if body.thinking_budget_tokens is not None else body.reasoning_budget,
                enable=variables.get("enable_thinking", body.enable_thinking))
            switch, thinking_on = template_kwargs(parser, thinking, messages)
            variables.update(switch)
            messages_in = strip_history(messages, parser)
        else:
            messages_in = messages
        fmt, renders = self._tool_format()
        tools = [t.model_dump(exclude_none=True) for t in body.tools] if self._tools_on(body) else None
        rendered, extra = prepare(messages_in, tools, fmt, renders)
        text = template.render(rendered, add_generation_prompt=True, **{**variables, **extra})
        if parser is not None:
            from aiboxctl.engine.reasoning import plan

            decided = plan(parser, text, on=thinking_on, budget=thinking.budget)
            text = decided.prompt
            close = tuple(rt.tokenize(decided.close_text, add_special=False, parse_special=True))
            body._reasoning = {"reasoning": decided.parser, "think_budget": decided.budget, "think_close": close}
            # a grammar (JSON, a forced call) holds from the end of the thinking, not before it
            body._think_end = parser.end_tag if thinking_on else None
        add_bos = rt.add_bos and not (template.spec.bos_token and text.startswith(template.spec.bos_token))
        return rt.tokenize(text, add_special=add_bos, parse_special=True), messages

    def _forced_call(self, body: ChatBody) -> bool:
        """``tool_choice`` required or named: the reply must be a call."""
        choice = body.tool_choice
        return self._tools_on(body) and (choice == "required" or isinstance(choice, NamedToolChoice))

    def max_tokens_wanted(self, body: ChatBody) -> int | None:
        return body.max_completion_tokens or body.max_tokens

    def grammar(self, body: ChatBody) -> str | None:
        """The reply's grammar. Required/named calls and JSON output hold from the first token —
        or, when the reply thinks first, lazily from the end of the thinking (the thinking is
        free, the answer is held). ``tool_choice: auto`` with a format whose calls open with a
        marker gets the calls' grammar lazily from that marker: free text, but a call, once
        begun, is a valid call of one of the tools."""
        from aiboxctl.engine.structured import SchemaError, after_marker, response_format_grammar
        from aiboxctl.engine.tools import forced_grammar

        choice = body.tool_choice
        forced = self._forced_call(body)
        tools = [t.model_dump(exclude_none=True) for t in body.tools or ()]
        try:
            if forced:
                fmt, _ = self._tool_format()
                only = choice.function.name if isinstance(choice, NamedToolChoice) else None
                g = forced_grammar(fmt, tools, only=only, parallel=body.parallel_tool_calls)
            elif body.response_format is not None:
                g = response_format_grammar(body.response_format.model_dump(exclude_none=True))
            else:
                g = None
        except SchemaError as exc:
            raise Rejected(400, str(exc), param="tools" if forced else "response_format",
                           code="unsupported_schema", audit_error="invalid request") from None
        except ValueError as exc:
            raise Rejected(400, str(exc), param="response_format", code="invalid_value",
                           audit_error="invalid request") from None
        if g is not None:
            if body._think_end:
                body._triggers = (body._think_end,)
                return after_marker(g, body._think_end)
            return g
        if self._tools_on(body):
            fmt, _ = self._tool_format()
            if fmt.start:
                try:
                    g = forced_grammar(fmt, tools, only=None, parallel=body.parallel_tool_calls)
                except SchemaError as exc:
                    # auto never refused a tool before: a schema the grammar cannot hold leaves the
                    # calls unconstrained (parsed as written, text when they do not parse)
                    log.info("tool_choice auto: calls not held by a grammar (%s)", exc)
                    return None
                body._triggers = (fmt.start,)
                return g
        return None

    def grammar_triggers(self, body: ChatBody) -> tuple[str, ...]:
        return body._triggers

    def logprobs(self, body: ChatBody) -> Any:
        return chat_logprobs if body.logprobs else None

    def reader(self, body: ChatBody) -> Any:
        from aiboxctl.engine.tools import ToolReader

        if not self._tools_on(body):
            return None
        fmt, _ = self._tool_format()
        return _CallStream(ToolReader(fmt, frozenset(t.function.name for t in body.tools)))

    def choice(self, text: str, finish_reason: str | None, reader: Any = None) -> dict:
        if reader is None:
            return chat_choice(text, finish_reason)
        content, calls = reader.whole(text)
        out = chat_choice(content, reader.finish_reason(finish_reason))
        if calls:
            out["message"]["content"] = content or None
            out["message"]["tool_calls"] = calls
        return out

    def chunk_choice(self, text: str | None, finish_reason: str | None, reader: Any = None) -> dict | None:
        if reader is None:
            return chat_delta_choice(text, finish_reason)
        delta = reader.delta(text) if text is not None else reader.closing()
        if text is not None and not delta:
            return None
        reason = None if text is not None else reader.finish_reason(finish_reason)
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}

    def request_options(self, body: ChatBody) -> dict[str, Any]:
        return body._reasoning or {}

    def reasoning_choice(self, text: str) -> dict:
        return chat_reasoning_choice(text)

    def with_reasoning(self, choice: dict, reasoning: str) -> dict:
        choice["message"]["reasoning_content"] = reasoning or None
        return choice

    def opening_choice(self) -> dict | None:
        return chat_role_choice()


class _CallStream:
    """A ToolReader's results as OpenAI shapes: whole (content, tool_calls) or deltas, with the
    calls numbered in order as the SDK reassembles them. Where the format allows (Hermes), a
    call is streamed as OpenAI does: ``{index, id, type, function{name, arguments: ""}}`` once
    its name is written, then ``function.arguments`` fragments as the arguments grow; when its
    block closes, what is left of the arguments. Other formats send each call whole."""

    def __init__(self, reader: Any) -> None:
        self.reader = reader
        self.n = 0
        self.open: tuple[int, str] | None = None  # the call being streamed: (index, arguments sent)

    def _shape(self, content: str, calls: list, partial: tuple[str, str] | None) -> dict:
        from aiboxctl.engine.tools.base import new_call_id

        delta: dict[str, Any] = {}
        if content:
            delta["content"] = content
        out: list[dict[str, Any]] = []
        for c in calls:
            if self.open is not None:  # the streamed call's block closed: the rest of its arguments
                index, sent = self.open
                self.open = None
                rest = c.arguments[len(sent):] if c.arguments.startswith(sent) else ""
                if rest:
                    out.append({"index": index, "function": {"arguments": rest}})
            else:
                out.append(c.wire(self.n))
                self.n += 1
        if partial is not None:
            name, args = partial
            if self.open is None and name in self.reader.names:
                self.open = (self.n, "")
                out.append({"index": self.n, "id": new_call_id(), "type": "function",
                            "function": {"name": name, "arguments": ""}})
                self.n += 1
            if self.open is not None:
                index, sent = self.open
                if len(args) > len(sent) and args.startswith(sent):
                    self.open = (index, args)
                    if out and out[-1]["index"] == index:
                        out[-1]["function"]["arguments"] += args[len(sent):]
                    else:
                        out.append({"index": index, "function": {"arguments": args[len(sent):]}})
        elif self.open is not None and not self.reader.in_block and not calls:
            self.open = None  # its block closed without parsing: the text went out as content
        if out:
            delta["tool_calls"] = out
        return delta

    def whole(self, text: str) -> tuple[str, list[dict]]:
        c1, k1 = self.reader.feed(text)
        c2, k2 = self.reader.finish()
        return c1 + c2, [c.wire() for c in k1 + k2]

    def delta(self, text: str) -> dict:
        content, calls = self.reader.feed(text)
        return self._shape(content, calls, self.reader.partial())

    def closing(self) -> dict:
        return self._shape(*self.reader.finish(), None)

    def finish_reason(self, reason: str | None) -> str | None:
        return "tool_calls" if self.reader.calls and reason == "stop" else reason
