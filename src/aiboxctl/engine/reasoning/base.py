"""The abstract reasoning parser and the one streaming splitter every ``<think>`` family shares.

A parser is made per request and fed the reply's text as the slot writes it (any chunking: a
token, a step's worth, the whole reply); it hands back what is thinking and what is answer.
A tag cut over two pieces is held back until it can be told apart from ordinary text, so the
split is the same however the text is cut and a tag never reaches the answer.

Whitespace: the thinking and the answer each lose their leading whitespace, and the thinking
its trailing whitespace (R1 writes ``<think>\\n…\\n</think>\\n\\n answer``). Trailing whitespace
inside the thinking is held back until more thinking follows, so that, too, does not depend on
the chunking.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from aiboxctl.engine.slot import held_suffix

# states
START = 0  # nothing decided yet: a start tag may open the reply (after whitespace)
THINK_LEAD = 1  # inside the thinking, before its first non-space (a repeated start tag is dropped)
THINK = 2
ANSWER_LEAD = 3  # the answer, before its first non-space
ANSWER = 4


class ReasoningParser(ABC):
    """One request's split of the model's text into thinking and answer.

    Class attributes say what a family writes and how it is controlled; instances are the
    per-request state machine. ``push`` and ``finish`` return ``(reasoning, content)``."""

    name: ClassVar[str]
    start_tag: ClassVar[str] = "<think>"
    end_tag: ClassVar[str] = "</think>"
    # what the thinking budget injects when spent: the model's own way of closing its thinking
    close_text: ClassVar[str] = "\n</think>\n\n"
    # the model thinks whenever it may: text before any tag is thinking (R1, QwQ, GLM-Z1).
    # A hybrid (Qwen3) answers directly unless its reply opens with the start tag.
    always_thinks: ClassVar[bool] = True

    def __init__(self, *, inside: bool = False, answering: bool = False) -> None:
        """``inside``: the prompt already opened the thinking (R1's template ends with
        ``<think>\\n``); ``answering``: the prompt already closed it (thinking off)."""
        self.state = ANSWER_LEAD if answering else THINK_LEAD if inside else START
        self.pending = ""  # text not yet handed out: a partial tag or trailing whitespace

    # --- per family: how the prompt turns thinking on and off ---------------------------
    @classmethod
    def template_kwargs(cls, thinking: bool) -> dict[str, Any]:
        """Variables the chat template reads to switch the thinking (Qwen3: ``enable_thinking``)."""
        return {}

    @classmethod
    def soft_switch(cls, messages: list[dict[str, Any]]) -> bool | None:
        """Whether the messages themselves switch the thinking on or off (Qwen3's ``/think``,
        ``/no_think``); None: they say nothing."""
        return None

    @classmethod
    def prompt_state(cls, prompt: str) -> str:
        """"open" when the rendered prompt ends inside the thinking, "closed" when it ends with
        an (empty) thinking block already closed, else "none"."""
        tail = prompt.rstrip()
        if tail.endswith(cls.start_tag):
            return "open"
        if tail.endswith(cls.end_tag):
            body = tail[: -len(cls.end_tag)].rstrip()
            if body.endswith(cls.start_tag):
                return "closed"
        return "none"

    @classmethod
    def close_prompt(cls, prompt: str) -> str:
        """The prompt with the thinking already written and empty: how thinking is turned off
        for a model whose template has no switch (llama.cpp does the same for R1)."""
        state = cls.prompt_state(prompt)
        if state == "closed":
            return prompt
        if state == "open":
            return prompt + cls.close_text.lstrip(" ")
        return prompt + cls.start_tag + "\n" + cls.close_text

    # --- the split ----------------------------------------------------------------------
    @property
    def thinking(self) -> bool:
        """Inside the thinking now (what the budget counts)."""
        return self.state in (THINK_LEAD, THINK)

    def push(self, text: str) -> tuple[str, str]:
        self.pending += text
        return self._run(final=False)

    def finish(self) -> tuple[str, str]:
        """The end of the reply (end of text, stop string, max_tokens): what was held back.
        Unclosed thinking stays thinking; a partial tag that never completed is plain text."""
        return self._run(final=True)

    @abstractmethod
    def _run(self, *, final: bool) -> tuple[str, str]:
        ...


class ThinkTagParser(ReasoningParser):
    """``<think>…</think>`` then the answer: the shape of every family served today."""

    def _run(self, *, final: bool) -> tuple[str, str]:
        reasoning: list[str] = []
        content: list[str] = []
        start, end = self.start_tag, self.end_tag
        while True:
            p = self.pending
            st = self.state
            if st == START or st == THINK_LEAD or st == ANSWER_LEAD:
                q = p.lstrip()
                self.pending = p = q
                if not p:
                    break
                if st != ANSWER_LEAD and p.startswith(start):
                    self.pending = p[len(start):]
                    self.state = THINK_LEAD
                    continue
                if st != ANSWER_LEAD and start.startswith(p) and not final:
                    break  # may still become the start tag
                if st == START:
                    self.state = THINK if self.always_thinks else ANSWER
                else:
                    self.state = THINK if st == THINK_LEAD else ANSWER
                continue
            if st == THINK:
                k = p.find(end)
                if k >= 0:
                    reasoning.append(p[:k].rstrip())
                    self.pending = p[k + len(end):]
                    self.state = ANSWER_LEAD
                    continue
                if final:
                    reasoning.append(p.rstrip())
                    self.pending = ""
                    break
                keep = held_suffix(p, (end,))
                body = p[: len(p) - keep]
                stripped = body.rstrip()
                reasoning.append(stripped)
                self.pending = body[len(stripped):] + p[len(p) - keep:]
                break
            # ANSWER: tags never reach the answer
            if not final:
                keep = held_suffix(p, (start, end))
                out, self.pending = p[: len(p) - keep], p[len(p) - keep:]
            else:
                out, self.pending = p, ""
            content.append(out.replace(start, "").replace(end, "") if (start in out or end in out) else out)
            break
        return "".join(reasoning), "".join(content)
