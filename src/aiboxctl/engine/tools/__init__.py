"""Tool calls: one small parser per model family's format behind one registry (vLLM's
tool_parsers layout; our own code). :func:`format_for` picks the format from the chat template;
:func:`prepare` puts tools and earlier calls into the messages the template renders;
:func:`forced_grammar` builds the grammar that makes ``tool_choice`` required/named hold;
:class:`ToolReader` splits the model's reply into content and calls, streamed or not."""

from __future__ import annotations

import json
from typing import Any

from aiboxctl.engine.tools.base import ToolCall, ToolFormat, ToolReader
from aiboxctl.engine.tools.deepseek import DeepSeekV3
from aiboxctl.engine.tools.glm4 import Glm4
from aiboxctl.engine.tools.hermes import Hermes
from aiboxctl.engine.tools.llama3 import Llama3Json

# detection order: the most specific markers first; Hermes is also the fallback
FORMATS: dict[str, type[ToolFormat]] = {f.name: f for f in (DeepSeekV3, Glm4, Llama3Json, Hermes)}

__all__ = ["FORMATS", "ToolCall", "ToolFormat", "ToolReader", "format_for", "forced_grammar", "prepare",
           "template_renders_tools"]


def format_for(template: str, name: str | None = None) -> ToolFormat:
    """The format named ``name``, or the one whose markers the template carries (Hermes if none)."""
    if name:
        if name not in FORMATS:
            raise ValueError(f"unknown tool-call format {name!r} (one of {', '.join(FORMATS)})")
        return FORMATS[name]()
    for cls in FORMATS.values():
        if cls.detect(template):
            return cls()
    return Hermes()


def template_renders_tools(template: str) -> bool:
    """Whether the chat template reads the ``tools`` variable (transformers' convention)."""
    return "tools" in template


def _arguments(raw: Any) -> dict:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw) if raw.strip() else {}
        except ValueError:
            raise ValueError("an assistant message's tool call has arguments that are not JSON") from None
    if not isinstance(raw, dict):
        raise ValueError("an assistant message's tool call arguments must be a JSON object")
    return raw


def _calls_of(message: dict) -> list[tuple[str, dict]]:
    out = []
    for c in message.get("tool_calls") or ():
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ValueError("an assistant message's tool_calls entry needs function.name")
        out.append((fn["name"], _arguments(fn.get("arguments", {}))))
    return out


def instructions(fmt: ToolFormat, tools: list[dict]) -> str:
    """The system text that teaches a model whose template knows nothing of tools to call them."""
    sigs = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    example = fmt.write_calls([("<function-name>", {"<argument>": "<value>"})])
    return ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            f"You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{sigs}\n</tools>\n\n"
            f"To call a function, reply with exactly:\n{example}")


def prepare(messages: list[dict], tools: list[dict] | None, fmt: ToolFormat,
            renders_tools: bool) -> tuple[list[dict], dict[str, Any]]:
    """(messages, extra template variables). A template that renders tools gets ``tools`` and the
    calls with their arguments as objects (as transformers passes them); for one that does not,
    the tools are described in the system message, earlier calls are written in the format and
    tool results become user turns."""
    if renders_tools:
        out = []
        for m in messages:
            if m.get("tool_calls"):
                calls = [{"type": "function", "id": c.get("id"), "function": {"name": n, "arguments": a}}
                         for c, (n, a) in zip(m["tool_calls"], _calls_of(m))]
                m = {**m, "tool_calls": calls}
            out.append(m)
        return out, ({"tools": tools} if tools else {})
    out = []
    for m in messages:
        if m["role"] == "assistant" and m.get("tool_calls"):
            text = fmt.write_calls(_calls_of(m))
            content = m.get("content") or ""
            out.append({"role": "assistant", "content": f"{content}\n{text}" if content else text})
        elif m["role"] == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{m.get('content') or ''}\n</tool_response>"})
        else:
            out.append({k: v for k, v in m.items() if k != "tool_calls"})
    if tools:
        teach = instructions(fmt, tools)
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{teach}"}
        else:
            out.insert(0, {"role": "system", "content": teach})
    return out, {}


def forced_grammar(fmt: ToolFormat, tools: list[dict], *, only: str | None, parallel: bool) -> str:
    """GBNF for a reply that is one call (or, ``parallel``, several) of the request's functions —
    only ``only`` when a function is named — whose arguments match each function's schema.
    SchemaError names a parameters schema that cannot be enforced."""
    from aiboxctl.engine.structured import GrammarBuilder, SchemaError

    b = GrammarBuilder()
    alts = []
    for i, t in enumerate(tools):
        fn = t["function"]
        if only is not None and fn["name"] != only:
            continue
        params = fn.get("parameters") or {"type": "object"}
        try:
            args = b.value(params, f"fn{i}-args")
        except SchemaError as exc:
            raise SchemaError(f"tools[{i}] ({fn['name']}) parameters: {exc}", exc.keyword, exc.where) from None
        alts.append(b.add(f"fn{i}-call", fmt.call_rule(b, fn["name"], args)))
    one = b.add("call", " | ".join(alts))
    return b.grammar(fmt.calls_rule(one, parallel and only is None))
