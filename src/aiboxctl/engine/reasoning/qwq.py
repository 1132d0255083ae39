"""QwQ-32B: ChatML with ``<think>``. Its template ends the prompt with ``<think>\\n`` (the reply
only closes the thinking); it always thinks, like R1. Thinking off: an empty closed block."""

from __future__ import annotations

from aiboxctl.engine.reasoning.base import ThinkTagParser


class QwQParser(ThinkTagParser):
    name = "qwq"
