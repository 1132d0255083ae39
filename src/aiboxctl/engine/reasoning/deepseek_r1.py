"""DeepSeek-R1 and its distills (Qwen2.5 and Llama bases).

R1 always thinks. Its current template ends the prompt with ``<think>\\n``, so the reply starts
inside the thinking and only closes it (``…\\n</think>\\n\\nanswer``); the first published
template (still in many GGUFs) ends with ``<｜Assistant｜>`` and the reply opens with
``<think>\\n`` itself. Text before ``</think>`` is thinking either way, and a reply cut before
``</think>`` (max_tokens, a stop string) is all thinking. Thinking off: the prompt gets an
empty, closed thinking block, as llama.cpp does."""

from __future__ import annotations

from aiboxctl.engine.reasoning.base import ThinkTagParser


class DeepSeekR1Parser(ThinkTagParser):
    name = "deepseek_r1"
