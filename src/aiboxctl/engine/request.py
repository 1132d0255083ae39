"""What a generation request carries into the decode loop, and what comes back out of it.

The HTTP side builds a :class:`Request` (prompt tokens, :class:`SamplingParams`, an ``emit``
callback) and submits it; from then on the loop owns it and reports through ``emit``:

* ``("text", str)``                                   a piece of completion text (valid UTF-8)
* ``("reasoning", str)``                              a piece of the thinking, when the request
                                                      has a reasoning parser (the text is then the answer)
* ``("logprobs", (bytes, logprob, top))``             the next token's log-probabilities, before
                                                      its text (only when the request asked)
* ``("done", finish_reason, prompt_tokens, completion_tokens)``
* ``("error", message)``

(Tuples: cheap to build, cheap to pass across threads.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiboxctl.errors import AiboxError

Event = tuple


class QueueFull(AiboxError):
    code = "queue_full"


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 1.0
    top_k: int = 40
    top_p: float = 1.0
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_last_n: int = 64
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit)
    grammar: str | None = None  # GBNF the reply must match (structured output, forced tool calls)
    grammar_triggers: tuple[str, ...] = ()  # a lazy grammar: it holds from the first of these texts on
    logprobs: int | None = None  # report each token's log-probability and this many alternatives

    @property
    def uses_penalties(self) -> bool:
        return self.repeat_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    @property
    def plain_greedy(self) -> bool:
        """Greedy with nothing that changes the logits: an argmax, no sampler chain."""
        return self.temperature <= 0 and not self.uses_penalties and not self.logit_bias


class Request:
    """One generation request, owned by the loop once submitted."""

    __slots__ = ("id", "prompt", "params", "emit", "cancelled", "t_submit", "t_first", "t_last",
                 "prompt_tokens", "completion_tokens", "finish_reason", "reasoning", "think_budget",
                 "think_close", "reasoning_tokens", "stop_sequence")

    def __init__(self, id: str, prompt: list[int], params: SamplingParams, emit: Callable[[Event], Any], *,
                 reasoning: Any = None, think_budget: int | None = None, think_close: tuple[int, ...] = ()) -> None:
        self.id = id
        self.prompt = prompt
        self.params = params
        self.emit = emit
        self.cancelled = False
        self.t_submit = time.monotonic()
        self.t_first: float | None = None
        self.t_last = 0.0
        self.prompt_tokens = len(prompt)
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        # the reply's thinking/answer split (engine.reasoning parser, owned by the loop), and the
        # thinking budget: after think_budget thinking tokens the loop writes think_close's tokens
        self.reasoning = reasoning
        self.think_budget = think_budget
        self.think_close = think_close
        self.reasoning_tokens = 0  # completion tokens written inside the thinking
        self.stop_sequence: str | None = None  # the stop string that ended the reply (Anthropic reports it)
