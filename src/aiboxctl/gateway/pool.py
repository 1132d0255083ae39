"""The live state behind the balancer: replicas (health, slots, requests in flight), one pool
per model with its affinity table and its bounded FIFO queue, and the health poller.

Every decision is :func:`aiboxctl.gateway.balance.choose_replica` over a snapshot; this module
only keeps the counts true and hands a freed slot to the oldest waiter of a model."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiboxctl.gateway.balance import AffinityTable, ReplicaView, choose_replica
from aiboxctl.gateway.config import EngineEntry, GatewayConfig

log = logging.getLogger("aiboxctl.gateway")


class Refusal(Exception):
    """A request the front door answers itself, in OpenAI's error shape."""

    def __init__(self, status: int, message: str, *, code: str, type_: str = "invalid_request_error",
                 param: str | None = None, retry_after: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.type, self.param = status, message, code, type_, param
        self.retry_after = retry_after
        self.reason = reason  # the rejected_total label, when it is one

    @property
    def label(self) -> str:
        """Its access_denied_total label: the reason, else the status."""
        return self.reason or str(self.status)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after else {}


@dataclass
class Replica:
    entry: EngineEntry
    client: Any  # upstream.EngineClient
    healthy: bool = False
    reason: str | None = "not checked yet"
    outstanding: int = 0
    slots: int = 1
    slot_ctx: int | None = None  # /v1/models' context_length
    # Health checks timed out in a row (reset by an answer); out at config.health_failures.
    failures: int = 0
    # Chunks relayed from this engine (the relay adds one per chunk), and the count the last
    # health check saw: a timed-out check with chunks since then is a busy engine, not a hung one.
    relayed: int = 0
    relayed_seen: int = 0
    # The relays holding a slot here, each with ``cut(reason)``: when the health checks find the
    # engine hung, they are ended (the client told, the slot freed) rather than left waiting.
    in_flight: set = field(default_factory=set)

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def state(self) -> str:
        """"healthy", "slow" (in and serving, but its last health checks timed out: fewer than
        health_failures in a row; ``reason`` says how slow) or "down" (``reason`` says why)."""
        if not self.healthy:
            return "down"
        return "slow" if self.reason else "healthy"  # a healthy replica keeps a reason only when slow

    def view(self) -> ReplicaView:
        return ReplicaView(self.name, self.healthy, self.outstanding, self.slots)


@dataclass
class ModelPool:
    name: str
    role: str
    replicas: list[Replica]
    affinity: AffinityTable = field(default_factory=AffinityTable)
    # (future handed the replica, affinity key, replicas this request must not use)
    waiters: deque = field(default_factory=deque)

    def views(self, excluded: frozenset[str] = frozenset()) -> list[ReplicaView]:
        return [r.view() for r in self.replicas if r.name not in excluded]


class Gateway:
    """Replicas and model pools of one front door."""

    def __init__(self, config: GatewayConfig, clients: dict[str, Any]) -> None:
        self.config = config
        self.replicas = {e.name: Replica(e, clients[e.name]) for e in config.engines}
        self.pools = {m: ModelPool(m, engines[0].role, [self.replicas[e.name] for e in engines])
                      for m, engines in config.models().items()}
        self._keys = itertools.count()

    # --- choosing and queueing ------------------------------------------------------------

    def _pick(self, pool: ModelPool, key: str | None, excluded: frozenset[str]) -> Replica | None:
        choice = choose_replica(pool.views(excluded), key or f"#{next(self._keys)}",
                                pool.affinity.get(key) if key else None, self.config.affinity_slack)
        if choice is None:
            return None
        replica = self.replicas[choice.replica]
        replica.outstanding += 1
        if key:
            pool.affinity.put(key, replica.name)
        return replica

    def _unavailable(self, pool: ModelPool, excluded: frozenset[str]) -> Refusal | None:
        live = [r for r in pool.replicas if r.name not in excluded]
        if any(r.healthy for r in live):
            return None
        down = "; ".join(f"{r.name}: {r.reason}" for r in pool.replicas)
        return Refusal(503, f"model {pool.name!r} has no healthy replica right now ({down})", code="model_unavailable",
                       type_="server_error", retry_after=self.config.retry_after_s, reason="unavailable")

    async def acquire(self, pool: ModelPool, key: str | None, excluded: frozenset[str] = frozenset()) -> Replica:
        """A replica with a free slot for this request (its in-flight count already taken),
        after waiting in the model's FIFO queue if every slot is busy. Refusal: 503 when no
        replica is healthy, 429 with Retry-After when the queue is full or the wait too long."""
        refusal = self._unavailable(pool, excluded)
        if refusal:
            raise refusal
        if not pool.waiters:
            replica = self._pick(pool, key, excluded)
            if replica is not None:
                return replica
        cfg = self.config
        if len(pool.waiters) >= cfg.queue_depth:
            raise Refusal(429, f"model {pool.name!r} is busy: every slot is taken and {len(pool.waiters)} requests "
                          "are waiting; retry later", code="queue_full", type_="rate_limit_error",
                          retry_after=cfg.retry_after_s, reason="queue_full")
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        entry = (fut, key, excluded)
        pool.waiters.append(entry)
        try:
            done, _ = await asyncio.wait({fut}, timeout=cfg.queue_timeout_s)
        except BaseException:
            self._forget(pool, entry)
            raise
        if not done:
            self._forget(pool, entry)
            raise self._unavailable(pool, excluded) or Refusal(
                429, f"model {pool.name!r} is busy: no slot freed within {cfg.queue_timeout_s:g} s; retry later",
                code="queue_timeout", type_="rate_limit_error", retry_after=cfg.retry_after_s, reason="queue_timeout")
        return fut.result()

    def _forget(self, pool: ModelPool, entry: tuple) -> None:
        fut = entry[0]
        try:
            pool.waiters.remove(entry)
        except ValueError:
            pass
        if fut.done() and not fut.cancelled():
            self.release(fut.result())  # a slot was handed over just as the waiter left
        else:
            fut.cancel()

    def release(self, replica: Replica) -> None:
        replica.outstanding -= 1
        self.dispatch()

    def dispatch(self) -> None:
        """Hand free slots to the oldest waiters, model by model."""
        for pool in self.pools.values():
            while pool.waiters:
                fut, key, excluded = pool.waiters[0]
                if fut.done():
                    pool.waiters.popleft()
                    continue
                replica = self._pick(pool, key, excluded)
                if replica is None:
                    break
                pool.waiters.popleft()
                fut.set_result(replica)

    # --- health -----------------------------------------------------------------------------

    def mark_down(self, replica: Replica, reason: str) -> None:
        if replica.healthy:
            log.warning("engine %s taken out: %s", replica.name, reason)
        replica.healthy, replica.reason, replica.failures = False, reason, 0

    def _set_health(self, replica: Replica, healthy: bool, reason: str | None) -> None:
        was = replica.healthy
        replica.healthy, replica.reason = healthy, reason
        if healthy and not was:
            log.info("engine %s is healthy (%d slots)", replica.name, replica.slots)
            self.dispatch()
        elif was and not healthy:
            log.warning("engine %s taken out: %s", replica.name, reason)

    def _timed_out(self, replica: Replica) -> None:
        """A health check that got no answer in time: a failure, unless the replica relayed
        bytes since the previous check (its engine is busy serving, not hung). The replica goes
        out at ``health_failures`` in a row; until then it serves, its reason saying how slow."""
        if replica.relayed != replica.relayed_seen:
            return
        replica.failures += 1
        limit, what = self.config.health_failures, f"no answer within {self.config.health_timeout_s:g} s"
        if replica.failures >= limit or not replica.healthy:
            times = "once" if replica.failures == 1 else f"{replica.failures} times in a row"
            self._set_health(replica, False, f"health check timed out {times} ({what})")
            # A stream that has begun and relayed nothing since the last check is hung now; an
            # answer that relays nothing until it ends (not a stream, or a stream still in its
            # prefill) may be a busy engine's long one: those end only after as many more checks.
            self._cut_in_flight(replica, waiting=replica.failures >= 2 * limit)
        else:
            replica.reason = f"health check slow ({replica.failures}/{limit}): {what}"
            log.warning("engine %s: %s", replica.name, replica.reason)

    def _cut_in_flight(self, replica: Replica, *, waiting: bool) -> None:
        """The replica is hung (its checks time out and it relayed nothing since the last one):
        end its streams in flight that have begun and, with ``waiting``, also the answers still
        waiting for their first byte; waiting longer would hold the clients and the slots until
        the engine came back, which a wedged engine never does."""
        holds = [h for h in replica.in_flight if waiting or h.streaming]
        if holds:
            log.warning("engine %s is hung: ending %d answer(s) in flight", replica.name, len(holds))
        for hold in holds:
            hold.cut(f"engine {replica.name} stopped responding mid-answer: {replica.reason}")

    async def check(self, replica: Replica) -> None:
        """One health check: GET /health; healthy when it answers 200 with status ok for a
        model this replica is configured to serve. No answer in time counts towards
        ``health_failures`` (see :meth:`_timed_out`); a refused connection or a not-ok answer
        takes the replica out at once."""
        try:
            await self._check(replica)
        finally:
            replica.relayed_seen = replica.relayed

    async def _check(self, replica: Replica) -> None:
        from aiboxctl.gateway.upstream import Silent, UpstreamError

        try:
            r = await replica.client.get("/health", timeout=self.config.health_timeout_s)
            data = r.json() if r.content_type.startswith("application/json") else {}
        except Silent:
            self._timed_out(replica)
            return
        except (UpstreamError, ValueError) as exc:
            replica.failures = 0  # not slow: gone (connection refused, cut) or garbled; out now
            self._set_health(replica, False, f"health check failed: {exc}" if isinstance(exc, UpstreamError)
                             else f"health check failed: the answer is not JSON ({exc})")
            return
        replica.failures = 0  # it answered: whatever it said, the timeouts in a row are over
        if r.status != 200 or not isinstance(data, dict) or data.get("status") != "ok":
            why = data.get("reason") or data.get("status") if isinstance(data, dict) else None
            self._set_health(replica, False, f"/health answered {r.status}" + (f" ({why})" if why else ""))
            return
        served = data.get("model")
        if served not in replica.entry.models:
            self._set_health(replica, False, f"serves {served!r}, configured for {', '.join(replica.entry.models)}")
            return
        slots = data.get("slots_total")
        replica.slots = slots if isinstance(slots, int) and slots > 0 else 1
        replica.slot_ctx = data.get("slot_ctx") if isinstance(data.get("slot_ctx"), int) else None
        if replica.state == "slow":
            log.info("engine %s answers its health checks again", replica.name)
        self._set_health(replica, True, None)

    async def check_all(self) -> None:
        await asyncio.gather(*(self.check(r) for r in self.replicas.values()))

    async def poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.health_interval_s)
            await self.check_all()
