"""Per-key limits: requests per minute, tokens per day, requests at once.

* Requests per minute is a sliding window: the times of the key's admitted requests in the last
  60 s; a request is admitted while there are fewer than ``rpm``. Retry-After is when the oldest
  leaves the window.
* Tokens per day (prompt + completion, the engines' ``usage``) are counted per local calendar
  day. A request *reserves* tokens at admission (its ``max_tokens`` plus its prompt's size) and
  *settles* on completion (the reservation is replaced by what usage says). A request is admitted
  while used + reserved is below the limit, so however many arrive at once the day can end above
  the limit by at most one admitted request's tokens. At the new day the count starts at zero;
  after a restart it starts at what the usage ledger says for today (``used_today``).
* Concurrency counts requests between admission and settlement.

One lock guards the counters: admission is a few dict operations. The front door's event loop
admits with ``admit_nowait``, which never waits for the lock (a thread holding it may be asking the
ledger for a new day) and never does I/O; whatever it cannot decide so goes to ``admit`` in a
thread. Tests drive both from threads with an injected clock.
"""

from __future__ import annotations

import datetime as dt
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional

from aiboxctl.access.keys import KeyRecord
from aiboxctl.access.refusal import AccessDenied

WINDOW_S = 60.0


def day_of(ts: float) -> tuple[dt.date, float]:
    """The local calendar day of ``ts`` and the epoch second it ends."""
    day = dt.datetime.fromtimestamp(ts).date()
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time()).timestamp()
    return day, end


@dataclass
class _KeyState:
    admitted: deque = field(default_factory=deque)  # times within the RPM window
    day: Optional[dt.date] = None
    used: int = 0  # settled tokens today
    reserved: int = 0  # tokens held by requests in flight (today's)
    in_flight: int = 0


@dataclass(frozen=True)
class Ticket:
    """An admitted request: what it holds until :meth:`Limiter.settle`."""

    key: str
    reserved: int
    day: Optional[dt.date]


class Limiter:
    def __init__(self, *, now: Callable[[], float] = time.time,
                 used_today: Callable[[str, float], int] | None = None) -> None:
        """``used_today(key_name, day_start)`` seeds a key's day from the ledger (None: 0)."""
        self.now = now
        self.used_today = used_today
        self._lock = threading.Lock()
        self._keys: dict[str, _KeyState] = {}

    def _state(self, name: str, now: float) -> _KeyState:
        st = self._keys.setdefault(name, _KeyState())
        day, end = day_of(now)
        if st.day != day:
            st.day = day
            start = dt.datetime.combine(day, dt.time()).timestamp()
            st.used = int(self.used_today(name, start)) if self.used_today else 0
            st.reserved = 0  # reservations of yesterday's requests settle into yesterday
        while st.admitted and st.admitted[0] <= now - WINDOW_S:
            st.admitted.popleft()
        return st

    def _refusal(self, key: KeyRecord, st: _KeyState, now: float) -> AccessDenied | None:
        """Why ``key`` cannot be admitted now (None: it can). Reads ``st`` only."""
        if key.concurrency is not None and st.in_flight >= key.concurrency:
            return AccessDenied(429, f"API key '{key.name}' is at its limit of {key.concurrency} concurrent "
                                     f"request(s); retry when one finishes", code="rate_limit_exceeded",
                                retry_after=1, limit="concurrency")
        if key.rpm is not None and len(st.admitted) >= key.rpm:
            wait = max(1, math.ceil(st.admitted[0] + WINDOW_S - now))
            return AccessDenied(429, f"API key '{key.name}' is over its limit of {key.rpm} requests per minute; "
                                     f"retry in {wait} s", code="rate_limit_exceeded", retry_after=wait, limit="rpm")
        if key.tokens_per_day is not None and st.used + st.reserved >= key.tokens_per_day:
            wait = max(1, math.ceil(day_of(now)[1] - now))
            return AccessDenied(429, f"API key '{key.name}' has used its {key.tokens_per_day} tokens per day "
                                     f"({st.used} used, {st.reserved} reserved by requests in flight); "
                                     f"the count resets at midnight, in {wait} s",
                                code="insufficient_quota", retry_after=wait, limit="tokens_per_day")
        return None

    @staticmethod
    def _take(key: KeyRecord, st: _KeyState, now: float, reserve_tokens: int) -> Ticket:
        st.admitted.append(now)
        st.in_flight += 1
        reserved = max(0, int(reserve_tokens)) if key.tokens_per_day is not None else 0
        st.reserved += reserved
        return Ticket(key.name, reserved, st.day)

    def admit(self, key: KeyRecord, reserve_tokens: int = 0) -> Ticket:
        now = self.now()
        with self._lock:
            st = self._state(key.name, now)
            if (denied := self._refusal(key, st, now)) is not None:
                raise denied
            return self._take(key, st, now, reserve_tokens)

    def admit_nowait(self, key: KeyRecord, reserve_tokens: int = 0) -> Ticket | None:
        """``admit`` without I/O, for the event loop: the ticket when the key is admitted and its
        day is already loaded; None when ``admit`` would refuse it or would ask ``used_today`` (the
        ledger) for a day it has not counted yet (a key's first request, the first after midnight):
        then nothing observable has changed (only times older than the window are dropped, as any
        call drops them), and also when the lock is held (by a thread that may be asking the
        ledger). The same lock and checks as ``admit``: exact under concurrency."""
        now = self.now()
        # Never wait for the lock: a thread holding it may be asking the ledger (_state on a new day).
        if not self._lock.acquire(blocking=False):
            return None
        try:
            st = self._keys.get(key.name)
            if (st is None or st.day != day_of(now)[0]) and self.used_today is not None:
                return None
            st = self._state(key.name, now)  # no I/O now; only drops times older than the window
            if self._refusal(key, st, now) is not None:
                return None
            return self._take(key, st, now, reserve_tokens)
        finally:
            self._lock.release()

    def settle(self, ticket: Ticket, used_tokens: int) -> None:
        """The request is over: free its slot and replace its reservation with what it used."""
        now = self.now()
        with self._lock:
            st = self._state(ticket.key, now)
            st.in_flight = max(0, st.in_flight - 1)
            if ticket.day == st.day:
                st.reserved = max(0, st.reserved - ticket.reserved)
                st.used += max(0, int(used_tokens))
            # else: it began yesterday; today's count starts fresh (the ledger files it by its time)
