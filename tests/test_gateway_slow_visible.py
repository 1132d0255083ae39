"""A replica in but slow (its health checks time out, fewer than ``health_failures`` in a row) is
visible beyond the front door's /health: the gauge ``aibox_gateway_replica_health_failures``
counts the timed-out checks in a row, and the admin view says "slow" with the reason.

A real gateway child (governed access on: /metrics and the admin view need an admin key) over
one engine that is a real TCP listener (tests/test_gateway_health.py's ``_ScriptedEngine``): it
answers /health until told to hang, then accepts and never answers. No timing is asserted; the
health interval only leaves room to read both views between two checks."""

from __future__ import annotations

import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from aiboxctl.access.keys import KeyLimits, KeyStore
from test_engine_support import wait_until
from test_gateway_health import MODEL, _gateway_child, engine  # noqa: F401  (engine: the fixture)


def _health_failures(base: str, key: str) -> float | None:
    r = httpx.get(base + "/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert r.status_code == 200, r.text
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            if s.name == "aibox_gateway_replica_health_failures" and s.labels == {"model": MODEL, "replica": "a"}:
                return s.value
    return None


def _replica(base: str, key: str) -> dict:
    r = httpx.get(base + "/v1/aibox/admin", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert r.status_code == 200, r.text
    (model,) = r.json()["models"]
    (replica,) = model["replicas"]
    return replica


def test_a_slow_replica_shows_in_metrics_and_the_admin_view(engine, tmp_path):  # noqa: F811
    admin = KeyStore(tmp_path / "keys.json").add("it-admin", KeyLimits(admin=True), now=time.time()).secret
    # 3 s between checks: room to read /metrics and the admin view after one timed-out check
    with _gateway_child(tmp_path, [{"name": "a", "models": [MODEL], "url": engine.url}], health_interval_s=3,
                        health_timeout_s=0.3, health_failures=3, keys_file=str(tmp_path / "keys.json"),
                        ledger_file=str(tmp_path / "usage.db")) as (base, log):
        assert _health_failures(base, admin) == 0, log.read_text()
        fine = _replica(base, admin)
        assert fine["healthy"] and fine["state"] == "healthy" and fine["reason"] is None, fine

        engine.mode = "hang"
        assert wait_until(lambda: _health_failures(base, admin) == 1, timeout=60), log.read_text()[-2000:]
        slow = _replica(base, admin)
        assert slow["healthy"] and slow["state"] == "slow", slow
        assert slow["reason"].startswith("health check slow (1/3): no answer within"), slow

        engine.mode = "ok"  # one answer clears the count
        assert wait_until(lambda: _health_failures(base, admin) == 0, timeout=60), log.read_text()[-2000:]
        back = _replica(base, admin)
        assert back["healthy"] and back["state"] == "healthy" and back["reason"] is None, back
