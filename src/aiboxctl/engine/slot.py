"""One slot of the decode loop (llama.cpp server's ``server_slot``): a KV-cache sequence, the
tokens it holds, the request bound to it and where that request is — prefill or generation —
and :class:`SlotText`, the one place a slot's completion text passes on its way out.

The loop (``scheduler``) moves slots through their states; nothing here touches llama.cpp.
"""

from __future__ import annotations

import codecs
from typing import Any

from aiboxctl.engine.request import Request


class SlotText:
    """A reply's text between the sampled tokens and the client: token bytes become UTF-8 (a
    character split over tokens waits for its last byte) and stop strings are cut (text that
    may be the start of one is held back; the stop string and what follows are never sent).
    Whatever later reads the reply as it is written — reasoning or tool-call parsers — sits here:
    with a reasoning parser (``engine.reasoning``) what passed the stop strings is split into
    thinking and answer, and ``push``/``tail`` return the thinking apart."""

    __slots__ = ("decoder", "held", "stops", "reasoning", "thought", "stopped_by")

    def __init__(self, stops: tuple[str, ...] = (), reasoning: Any = None) -> None:
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.stops = tuple(x for x in stops if x)
        self.held = ""  # text held back because it may be the start of a stop string
        self.reasoning = reasoning
        self.thought = ""  # the thinking the last push/tail produced (reasoning parser only)
        self.stopped_by: str | None = None  # the stop string that ended the reply

    @property
    def thinking(self) -> bool:
        """Inside the reply's thinking now (what a thinking budget counts)."""
        return self.reasoning is not None and self.reasoning.thinking

    def push(self, piece: bytes) -> tuple[str, bool]:
        """(answer text to send now, possibly empty; whether a stop string matched: the reply
        ends). With a reasoning parser the thinking this piece completed is left in ``thought``."""
        text, stopped = self._push(piece)
        if self.reasoning is None:
            return text, stopped
        self.thought, text = self.reasoning.push(text) if text else ("", "")
        if stopped:  # the reply ends here: whatever the parser held goes out now
            thought, rest = self.reasoning.finish()
            self.thought += thought
            text += rest
        return text, stopped

    def _push(self, piece: bytes) -> tuple[str, bool]:
        text = self.decoder.decode(piece)
        if not text:
            return "", False
        if not self.stops:
            return text, False
        held = self.held + text
        cut = -1
        for stop in self.stops:
            k = held.find(stop)
            if k >= 0 and (cut < 0 or k < cut):
                cut, self.stopped_by = k, stop
        if cut >= 0:
            self.held = ""
            return held[:cut], True
        keep = held_suffix(held, self.stops)
        self.held = held[len(held) - keep:]
        return held[: len(held) - keep], False

    def tail(self) -> str:
        """The held-back text, at the end of a reply that no stop string ended. Bytes still in
        the decoder are the start of a character the cut left incomplete: dropped, never sent as
        U+FFFD (invalid bytes inside the text were replaced already)."""
        tail, self.held = self.held, ""
        if self.reasoning is None:
            return tail
        self.thought, tail = self.reasoning.push(tail) if tail else ("", "")
        thought, rest = self.reasoning.finish()
        self.thought += thought
        return tail + rest


class Slot:
    __slots__ = ("seq", "cached", "req", "n_fed", "sampler", "text", "last", "out_idx", "out_row", "generating",
                 "max_tokens", "argmax", "grammar", "forced")

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.cached: list[int] = []  # tokens whose KV cells hold positions 0..len-1 of this sequence
        self.req: Request | None = None
        self.n_fed = 0  # prompt tokens already in the cache
        self.sampler: Any = None
        self.text = SlotText()
        self.last = -1  # sampled token still to be fed
        self.out_idx = -1  # batch row whose logits belong to this slot in the current step
        self.out_row = -1  # and the row of the step's logits holding them (outputs only, in batch order)
        self.generating = False
        self.max_tokens = 0
        self.argmax = False  # plain greedy: argmax over the logits, no sampler chain
        self.forced: list[int] = []  # tokens the loop writes instead of sampling (the budget's close)
        self.grammar: Any = None  # sampler.GrammarSampling when the reply must match a grammar


def held_suffix(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest end of ``text`` that is a proper prefix of one of ``markers``: the
    text a streaming reader holds back because it may still become a marker (a stop string, a
    thinking tag, a tool-call marker). Runs for every token: one ``find`` of each marker's first
    character in the last few characters, and a compare only where it occurs."""
    best = 0
    n = len(text)
    for m in markers:
        if not m:
            continue
        k = text.find(m[0], max(0, n - len(m) + 1))
        while k >= 0 and n - k > best:
            if m.startswith(text[k:]):
                best = n - k
                break
            k = text.find(m[0], k + 1)
    return best


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
