"""Reasoning: which served models think, and the split of their replies into thinking
(``reasoning_content``) and answer (``content``).

One small parser per family behind a registry (vLLM's ``vllm/reasoning`` layout): ``base``
holds the abstract parser and the shared ``<think>`` splitter, each family module says what is
its own. :func:`detect` picks the family for the served model at start-up (the engine setting
``reasoning_format``, else the catalog, else the chat template); :func:`plan` decides per
request (thinking on or off, budget, the prompt's end) and makes the request's parser.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiboxctl.engine.reasoning.base import ReasoningParser
from aiboxctl.engine.reasoning.deepseek_r1 import DeepSeekR1Parser
from aiboxctl.engine.reasoning.glm_z1 import GLMZ1Parser
from aiboxctl.engine.reasoning.qwen3 import Qwen3Parser
from aiboxctl.engine.reasoning.qwq import QwQParser

from aiboxctl.engine_settings import REASONING_FORMATS

log = logging.getLogger("aiboxctl.engine")

PARSERS: dict[str, type[ReasoningParser]] = {
    p.name: p for p in (DeepSeekR1Parser, Qwen3Parser, QwQParser, GLMZ1Parser)
}
# engine setting reasoning_format: "auto" detects, "none" sends the raw text (tags in content)
FORMATS = ("auto", "none", *PARSERS)
assert FORMATS == REASONING_FORMATS, "engine_settings.REASONING_FORMATS lists the parsers"

# catalog families with ``reasoning: true`` → their parser (by name prefix)
FAMILY_PARSERS = (("deepseek-r1", "deepseek_r1"), ("qwq", "qwq"), ("qwen3", "qwen3"), ("glm-z1", "glm_z1"))

# reasoning_effort → thinking budget in tokens (None: the model's own length; 0: thinking off)
EFFORT_BUDGETS: dict[str, int | None] = {"none": 0, "minimal": 256, "low": 1024, "medium": 4096, "high": None}


def get_parser(name: str) -> type[ReasoningParser]:
    return PARSERS[name]


def detect(setting: str, template: str, family: str | None = None,
           family_reasoning: bool = False) -> type[ReasoningParser] | None:
    """The served model's parser: the setting when it names one ("none": no split), else the
    catalog family when the catalog says it thinks, else what the chat template writes."""
    if setting == "none":
        return None
    if setting != "auto":
        return PARSERS[setting]
    if family and family_reasoning:
        for prefix, name in FAMILY_PARSERS:
            if family.startswith(prefix):
                return PARSERS[name]
    if "think>" not in template:
        return None
    if "<｜Assistant｜>" in template or "<｜User｜>" in template:
        return DeepSeekR1Parser
    if "enable_thinking" in template:
        return Qwen3Parser
    if "[gMASK]" in template or "<|assistant|>" in template:
        return GLMZ1Parser
    if "<|im_start|>" in template:
        return QwQParser
    return DeepSeekR1Parser  # an unknown template that writes <think>: thinking until </think>


def catalog_family(model: str | Path, model_name: str | None) -> tuple[str | None, bool]:
    """(family, whether the catalog says it thinks) of the served file: by the configured model
    name, else by the file name the catalog knows; (None, False) when the catalog does not know it."""
    try:
        from aiboxctl.models.catalog import load_catalog

        cat = load_catalog()
    except Exception:  # noqa: BLE001 - no catalog in this installation: the template decides
        return None, False
    variant = cat.variant(model_name) if model_name else None
    if variant is None:
        fname = Path(str(model)).name.lower()
        for v in cat.variants:
            if any(Path(str(getattr(f, "file", "") or "")).name.lower() == fname for f in v.files):
                variant = v
                break
    if variant is None:
        return None, False
    family = cat.families.get(variant.family)
    return variant.family, bool(family is not None and family.reasoning)


def for_model(setting: str, template: str, model: str | Path, model_name: str | None) -> type[ReasoningParser] | None:
    """:func:`detect` for the served model (start-up), logged."""
    family, thinks = catalog_family(model, model_name) if setting == "auto" else (None, False)
    parser = detect(setting, template, family, thinks)
    if parser is not None:
        log.info("reasoning: %s replies are split into reasoning_content and content (%s parser)",
                 model_name or Path(str(model)).name, parser.name)
    return parser


def strip_history(messages: list[dict[str, Any]], parser: type[ReasoningParser]) -> list[dict[str, Any]]:
    """Earlier turns' thinking is not fed back (R1's own rule, whatever the client sends):
    assistant messages lose ``reasoning_content`` (and ``reasoning``) and any ``<think>…</think>``
    at the head of their content; an unclosed thinking leaves nothing."""
    out = []
    for m in messages:
        if m.get("role") != "assistant":
            out.append(m)
            continue
        m = {k: v for k, v in m.items() if k not in ("reasoning_content", "reasoning")}
        content = m.get("content")
        if isinstance(content, str) and (parser.end_tag in content or content.lstrip().startswith(parser.start_tag)):
            k = content.rfind(parser.end_tag)
            m["content"] = content[k + len(parser.end_tag):].lstrip() if k >= 0 else ""
        out.append(m)
    return out


@dataclass(frozen=True)
class Thinking:
    """What a request asked about thinking: on/off (None: the model's default) and a budget
    in tokens (None: none)."""

    enabled: bool | None = None
    budget: int | None = None

    @classmethod
    def from_request(cls, *, effort: str | None = None, budget: int | None = None,
                     enable: bool | None = None) -> "Thinking":
        """An explicit budget wins over ``reasoning_effort``; a budget of 0 (or effort "none")
        turns thinking off; a negative budget (llama-server's -1) means none."""
        if budget is None and effort is not None:
            budget = EFFORT_BUDGETS[effort]
        if budget is not None and budget < 0:
            budget = None
        if budget == 0:
            return cls(False, None)
        return cls(enable, budget)


@dataclass
class RequestReasoning:
    """A chat request's decision: the prompt to tokenize, its parser, the budget."""

    prompt: str
    parser: ReasoningParser
    budget: int | None
    close_text: str


def template_kwargs(parser: type[ReasoningParser], thinking: Thinking,
                    messages: list[dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """(template variables, thinking on) for this request, before the template renders."""
    on = thinking.enabled
    if on is None:
        on = parser.soft_switch(messages)
    if on is None:
        on = True
    return (parser.template_kwargs(on), on)


def plan(parser: type[ReasoningParser], prompt: str, *, on: bool, budget: int | None) -> RequestReasoning:
    """After rendering: thinking off closes an open (or missing) thinking block in the prompt,
    so the reply is all answer; else the parser starts inside when the prompt ends open."""
    if not on:
        prompt = parser.close_prompt(prompt)
        return RequestReasoning(prompt, parser(answering=True), None, parser.close_text)
    inside = parser.prompt_state(prompt) == "open"
    return RequestReasoning(prompt, parser(inside=inside), budget, parser.close_text)


__all__ = ["PARSERS", "FORMATS", "EFFORT_BUDGETS", "ReasoningParser", "Thinking", "RequestReasoning",
           "detect", "get_parser", "strip_history", "template_kwargs", "plan"]
