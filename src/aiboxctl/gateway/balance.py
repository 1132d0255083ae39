"""Which replica serves a request: pure functions over a snapshot of the replicas' states.

The rule, in order:

1. Only healthy replicas with a free slot are candidates (``outstanding < slots``: the front
   door is the engines' only client, so what it has in flight is what they hold).
2. A request with an affinity key (the ``user`` field, else the conversation's leading
   messages, else the prompt's head: see :func:`affinity_key`) goes back to the replica that
   served that key last, while that replica is a candidate and has at most ``slack`` more
   requests in flight than the least busy candidate: that is where its KV prefix is cached.
3. Otherwise the least outstanding candidate; ties are broken by rendezvous hashing of the
   key, so a new conversation lands on the same replica every time the load is even, and
   requests without a key spread evenly.
4. No candidate: ``None`` — the caller queues the request (or answers 429/503).
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class ReplicaView:
    """One replica as the balancer sees it at one moment."""

    name: str
    healthy: bool
    outstanding: int  # requests the front door has in flight on it
    slots: int  # requests it decodes at once (its /health slots_total)

    @property
    def has_room(self) -> bool:
        return self.healthy and self.outstanding < self.slots


@dataclass(frozen=True)
class Choice:
    replica: str
    by_affinity: bool  # True when the key's previous replica was kept


def _rendezvous(key: str, name: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{key}\x00{name}".encode(), digest_size=8).digest(), "big")


def choose_replica(replicas: Sequence[ReplicaView], key: str, previous: str | None = None,
                   slack: int = 1) -> Choice | None:
    """The replica for a request with affinity ``key`` (any string; a random one when the
    request has none), given the replica that served the key last (``previous``)."""
    candidates = [r for r in replicas if r.has_room]
    if not candidates:
        return None
    least = min(r.outstanding for r in candidates)
    if previous is not None:
        for r in candidates:
            if r.name == previous and r.outstanding <= least + slack:
                return Choice(r.name, True)
    best = max((r for r in candidates if r.outstanding == least), key=lambda r: _rendezvous(key, r.name))
    return Choice(best.name, False)


_PROMPT_HEAD_CHARS = 512


def affinity_key(body: dict[str, Any]) -> str | None:
    """What identifies a conversation in an OpenAI request body, or None (embeddings, rerank).

    ``user`` when given (OpenAI's stable end-user id); else, for chat, the messages up to and
    including the first user message (the system prompt and the opening question stay the same
    as the conversation grows, and they lead the cached prefix); else, for completions, the
    first characters of the prompt."""
    user = body.get("user")
    if isinstance(user, str) and user:
        return "user:" + user
    messages = body.get("messages")
    if isinstance(messages, list) and messages:
        lead: list[Any] = []
        for m in messages:
            lead.append(m)
            if isinstance(m, dict) and m.get("role") == "user":
                break
        return "chat:" + _digest(lead)
    prompt = body.get("prompt")
    if isinstance(prompt, str) and prompt:
        return "prompt:" + _digest(prompt[:_PROMPT_HEAD_CHARS])
    return None


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


class AffinityTable:
    """Key → the replica that served it last; the oldest keys are forgotten beyond ``size``."""

    def __init__(self, size: int = 65536) -> None:
        self.size = size
        self._map: OrderedDict[str, str] = OrderedDict()

    def get(self, key: str) -> str | None:
        name = self._map.get(key)
        if name is not None:
            self._map.move_to_end(key)
        return name

    def put(self, key: str, replica: str) -> None:
        self._map[key] = replica
        self._map.move_to_end(key)
        while len(self._map) > self.size:
            self._map.popitem(last=False)

    def __len__(self) -> int:
        return len(self._map)
