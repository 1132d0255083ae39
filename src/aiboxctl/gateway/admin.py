"""The front door's admin view (issue 17): ``GET /v1/aibox/admin`` for admin keys.

What IT wants to see at a glance on the chat page: each model's role and replicas (health, slots,
requests in flight), the queue per model, the keys that made a request in the last
``ONLINE_MINUTES`` minutes and the tokens used today (since the box's local midnight). Replicas and
queues are read from the live pools; users and tokens from the usage ledger (read-only, off the
event loop). Only an admin key gets it: a user key is 403 and no key 401, in OpenAI's error shape.
A front door without keys has no admin keys (and no ledger), so there it is 403 saying how to turn
keys on.
Every refusal here is counted in ``aibox_gateway_access_denied_total{reason}`` as app.py counts the
others (auth_401, auth_403).
"""

# No `from __future__ import annotations`: FastAPI reads the route's annotations (Request).

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from fastapi import Request

from aiboxctl.errors import AiboxError
from aiboxctl.gateway.pool import Refusal

ONLINE_MINUTES = 15


@dataclass(frozen=True)
class KeyUsage:
    key: str
    requests: int
    errors: int
    tokens: int


@dataclass(frozen=True)
class ModelUsage:
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class LedgerView:
    """What the ledger says: keys active since ``online_since``, tokens since ``today_since``."""

    online_since: float
    today_since: float
    online: tuple[KeyUsage, ...]
    today: tuple[ModelUsage, ...]

    @property
    def tokens_today(self) -> int:
        return sum(m.prompt_tokens + m.completion_tokens for m in self.today)


def local_midnight(now: float) -> float:
    """The start of the box's local day containing ``now`` (DST-safe: mktime decides the offset)."""
    t = time.localtime(now)
    return time.mktime((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0, 0, 0, -1))


def read_ledger(path: Optional[Path], now: float, online_minutes: int = ONLINE_MINUTES) -> LedgerView:
    """The ledger's answer for the admin view; an absent ledger (no request recorded yet) is empty."""
    from aiboxctl.access.ledger import usage_report

    online_since, today_since = now - online_minutes * 60, local_midnight(now)
    if path is None or not Path(path).exists():
        return LedgerView(online_since, today_since, (), ())
    keys = usage_report(path, since=online_since, by="key", now=lambda: now)
    models = usage_report(path, since=today_since, by="model", now=lambda: now)
    return LedgerView(online_since, today_since,
                      tuple(KeyUsage(r.group or "", r.requests, r.errors, r.total_tokens) for r in keys.rows),
                      tuple(ModelUsage(r.group or "", r.requests, r.prompt_tokens, r.completion_tokens)
                            for r in models.rows))


def models_view(gw: Any) -> list[dict[str, Any]]:
    """Each model: role, queue, and each replica's health, slots, in flight. A replica's ``state``
    is "healthy", "slow" (in and serving, but its health checks time out: fewer than
    health_failures in a row) or "down"; ``reason`` says why when slow or down."""
    out = []
    for pool in gw.pools.values():
        replicas = [{"name": r.name, "healthy": r.healthy, "state": r.state, "reason": r.reason,
                     "slots": r.slots, "in_flight": r.outstanding} for r in pool.replicas]
        out.append({"id": pool.name, "role": pool.role, "replicas": replicas,
                    "replicas_healthy": sum(r.healthy for r in pool.replicas), "queue": len(pool.waiters)})
    return out


def _refusal_response(refusal: Refusal) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse(refusal.body(), status_code=refusal.status, headers=refusal.headers())


async def admin_refusal(gate: Any, request: Any) -> Optional[Refusal]:
    """None for an admin key; else the Refusal (401 no/wrong key, 403 not an admin key): the
    front door's gate decides, as for /metrics (gateway/access.py ADMIN_PATHS)."""
    refusal = await gate(request, None, 0) if gate is not None else None
    if refusal is not None or getattr(gate, "access", None) is not None:
        return refusal
    # another key check (or none) may say 401, but it cannot say who is an admin
    return Refusal(403, "the admin view needs keys on this front door: set keys_file in gateway.yaml and "
                   "make an admin key (aiboxctl keys add NAME --admin)", code="admin_required",
                   type_="permission_error", reason="auth_403")


def mount(app: Any, holder: dict[str, Any], gate: Any, *, now: Callable[[], float] = time.time) -> None:
    """Add ``GET /v1/aibox/admin`` to the front door's app (``holder["gw"]``: its live Gateway)."""
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    @app.get("/v1/aibox/admin")
    async def admin(request: Request) -> Any:
        refusal = await admin_refusal(gate, request)
        if refusal is not None:
            # counted as app.py's refused() counts every other refusal at the gate (auth_401, auth_403)
            request.app.state.metrics.denied.labels(refusal.label).inc()
            return _refusal_response(refusal)
        t = now()
        access = getattr(gate, "access", None)
        ledger_file = access.settings.ledger_file if access is not None else None
        ledger, ledger_error = None, None
        try:
            ledger = await run_in_threadpool(read_ledger, ledger_file, t)
        except AiboxError as exc:  # a damaged ledger: the live state still shows, and why the rest does not
            ledger_error = exc.message
        models = models_view(holder["gw"])
        body: dict[str, Any] = {
            "time": t, "online_minutes": ONLINE_MINUTES, "models": models,
            "queue_depth": sum(m["queue"] for m in models),
            "in_flight": sum(r["in_flight"] for m in models for r in m["replicas"]),
            "ledger": ledger_file is not None, "ledger_error": ledger_error,
            "users_online": None if ledger is None else [asdict(k) for k in ledger.online],
            "tokens_today": None if ledger is None else {
                "since": ledger.today_since, "total": ledger.tokens_today,
                "by_model": [asdict(m) for m in ledger.today]},
        }
        return JSONResponse(body, headers={"Cache-Control": "no-store"})
