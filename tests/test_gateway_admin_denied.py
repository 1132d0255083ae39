"""The admin view's refusals (``GET /v1/aibox/admin`` with a user key or none) are counted in
``aibox_gateway_access_denied_total{reason}`` like every other refusal at the front door's gate:
a real AccessGate over a key file and the usage ledger (tests/webstack.py ``admin_stack``), the
counter read from the front door's own /metrics with an admin key."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from webstack import admin_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with admin_stack(tmp_path_factory.mktemp("admin-denied")) as (base, keys):
        yield base, keys


def _denied(base: str, admin_key: str) -> dict[str, float]:
    r = httpx.get(base + "/metrics", headers={"Authorization": f"Bearer {admin_key}"}, timeout=30)
    assert r.status_code == 200, r.text
    return {s.labels["reason"]: s.value for f in text_string_to_metric_families(r.text)
            if f.name == "aibox_gateway_access_denied" for s in f.samples if s.name.endswith("_total")}


def test_admin_view_refusals_are_counted_like_every_other(stack):
    base, keys = stack
    before = _denied(base, keys["admin"])
    r = httpx.get(base + "/v1/aibox/admin", headers={"Authorization": f"Bearer {keys['clerk']}"}, timeout=30)
    assert r.status_code == 403
    r = httpx.get(base + "/v1/aibox/admin", timeout=30)
    assert r.status_code == 401
    r = httpx.get(base + "/v1/aibox/admin", headers={"Authorization": f"Bearer {keys['admin']}"}, timeout=30)
    assert r.status_code == 200  # an admin's look is not a refusal
    after = _denied(base, keys["admin"])
    assert after.get("auth_403", 0) - before.get("auth_403", 0) == 1, (before, after)
    assert after.get("auth_401", 0) - before.get("auth_401", 0) == 1, (before, after)
    # the same labels as a refusal on another route (a user key at /metrics)
    assert httpx.get(base + "/metrics", headers={"Authorization": f"Bearer {keys['clerk']}"},
                     timeout=30).status_code == 403
    assert _denied(base, keys["admin"])["auth_403"] == after["auth_403"] + 1


def test_without_keys_the_admin_views_refusal_is_counted_too(tmp_path):
    from fastapi.testclient import TestClient

    from aiboxctl.gateway.app import create_app
    from aiboxctl.gateway.config import EngineEntry, GatewayConfig

    config = GatewayConfig(engines=(EngineEntry(name="e", models=("m",), url="http://127.0.0.1:9"),),
                           health_interval_s=60.0)
    with TestClient(create_app(config)) as client:
        assert client.get("/v1/aibox/admin").status_code == 403
        text = client.get("/metrics").text  # no gate: /metrics is open
    (sample,) = [s for f in text_string_to_metric_families(text) if f.name == "aibox_gateway_access_denied"
                 for s in f.samples if s.name.endswith("_total")]
    assert sample.labels == {"reason": "auth_403"} and sample.value == 1
