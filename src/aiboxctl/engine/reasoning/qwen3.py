"""Qwen3 (hybrid thinking): the reply opens with ``<think>\\n`` when the model thinks and goes
straight to the answer when it does not, so text before any tag is answer, not thinking.

Switches: the template variable ``enable_thinking`` (false renders an empty closed block into
the prompt; clients send it in ``chat_template_kwargs``), and the soft switches ``/think`` and
``/no_think`` in the latest user or system message, the last one written winning (the model
then writes an empty block itself). The 2507 "Thinking" models' template ends the prompt with
``<think>\\n``: the reply starts inside, which the prompt check sees."""

from __future__ import annotations

from typing import Any

from aiboxctl.engine.reasoning.base import ThinkTagParser


class Qwen3Parser(ThinkTagParser):
    name = "qwen3"
    always_thinks = False

    @classmethod
    def template_kwargs(cls, thinking: bool) -> dict[str, Any]:
        return {"enable_thinking": thinking}

    @classmethod
    def soft_switch(cls, messages: list[dict[str, Any]]) -> bool | None:
        for m in reversed(messages):
            if m.get("role") not in ("user", "system"):
                continue
            text = m.get("content")
            if not isinstance(text, str):
                continue
            on, off = text.rfind("/think"), text.rfind("/no_think")
            if on < 0 and off < 0:
                continue  # the most recent switch written anywhere in the talk decides
            return on > off
        return None
