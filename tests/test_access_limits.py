"""Per-key limits under concurrent requests (threads, injected clock): RPM and tokens per day hit
exactly at their limit, never beyond one in-flight request's tokens; 429 says which limit and
when to retry; limits reset."""

from __future__ import annotations

import datetime as dt
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from aiboxctl.access.keys import KeyRecord
from aiboxctl.access.limits import Limiter, day_of
from aiboxctl.access.refusal import AccessDenied


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


NOON = dt.datetime(2025, 3, 14, 12, 0, 0).timestamp()


def key(**limits) -> KeyRecord:
    return KeyRecord(name="k", key_id="0" * 12, salt="00", hash="0" * 64, created_at=0.0, **limits)


def hammer(n: int, fn) -> list:
    barrier = threading.Barrier(n)

    def one(i: int):
        barrier.wait()
        try:
            return fn(i)
        except AccessDenied as exc:
            return exc

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_rpm_admits_exactly_the_limit_under_concurrency_then_resets():
    clock = Clock(NOON)
    limiter = Limiter(now=clock)
    k = key(rpm=7)
    results = hammer(32, lambda i: limiter.admit(k))
    refused = [r for r in results if isinstance(r, AccessDenied)]
    assert len(results) - len(refused) == 7
    r = refused[0]
    assert r.status == 429 and r.limit == "rpm" and "7 requests per minute" in r.message
    assert r.headers()["Retry-After"] == "60" and r.body()["error"]["type"] == "rate_limit_error"
    clock.t += 30
    with pytest.raises(AccessDenied) as exc:
        limiter.admit(k)
    assert exc.value.retry_after == 30
    clock.t += 30  # the window slid past the first seven
    limiter.admit(k)


def test_tokens_per_day_never_exceeded_by_more_than_one_request():
    clock = Clock(NOON)
    limiter = Limiter(now=clock)
    k = key(tokens_per_day=1000)
    used_each = 130  # every request uses what it reserved

    def request(i: int):
        ticket = limiter.admit(k, reserve_tokens=used_each)
        limiter.settle(ticket, used_each)
        return ticket

    results = hammer(40, request)
    admitted = [r for r in results if not isinstance(r, AccessDenied)]
    total = len(admitted) * used_each
    # admitted while used + reserved < limit: 8 × 130 = 1040 — over by less than one request
    assert 1000 <= total < 1000 + used_each
    refusal = next(r for r in results if isinstance(r, AccessDenied))
    assert refusal.limit == "tokens_per_day" and refusal.code == "insufficient_quota"
    midnight = day_of(NOON)[1]
    assert refusal.retry_after == int(midnight - NOON)
    clock.t = midnight + 1  # a new day starts at zero
    limiter.admit(k, reserve_tokens=10)


def test_tokens_exactly_at_limit_with_in_flight_reservations():
    limiter = Limiter(now=Clock(NOON))
    k = key(tokens_per_day=300)
    tickets = hammer(10, lambda i: limiter.admit(k, reserve_tokens=100))
    held = [t for t in tickets if not isinstance(t, AccessDenied)]
    assert len(held) == 3  # 3 × 100 reserved reach the limit: the rest wait for settlement
    limiter.settle(held[0], 40)  # used less than it reserved: room again
    limiter.admit(k, reserve_tokens=100)


def test_concurrency_limit_and_release():
    limiter = Limiter(now=Clock(NOON))
    k = key(concurrency=2)
    a, b = limiter.admit(k), limiter.admit(k)
    with pytest.raises(AccessDenied) as exc:
        limiter.admit(k)
    assert exc.value.limit == "concurrency" and exc.value.retry_after == 1
    limiter.settle(a, 0)
    limiter.admit(k)
    limiter.settle(b, 0)


def test_day_seeded_from_the_ledger_after_a_restart():
    seen = []

    def used_today(name, start):
        seen.append((name, start))
        return 990

    limiter = Limiter(now=Clock(NOON), used_today=used_today)
    k = key(tokens_per_day=1000)
    limiter.admit(k, reserve_tokens=50)  # 990 < 1000: admitted
    with pytest.raises(AccessDenied):
        limiter.admit(k, reserve_tokens=50)
    assert seen == [("k", dt.datetime(2025, 3, 14).timestamp())]


def test_no_limits_admits_everything():
    limiter = Limiter(now=Clock(NOON))
    results = hammer(16, lambda i: limiter.admit(key(), reserve_tokens=10**9))
    assert not [r for r in results if isinstance(r, AccessDenied)]
