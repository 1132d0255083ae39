"""/metrics from another machine still needs a key; from this box (loopback) it does not
(test_server.py::test_metrics_from_this_box_need_no_key). The real app and key ring, reached
through ASGI with a remote client address: no engine needs to run to answer /metrics."""

from __future__ import annotations

import asyncio

import httpx

from aiboxctl.engine.api.app import create_app
from aiboxctl.engine.config import engine_config_from_mapping
from aiboxctl.engine.security import KeyRing
from aiboxctl.engine.state import EngineState

KEY = "sk-metrics-4d2e"


def _get(app, client_host: str, headers: dict | None = None) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(client_host, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://box") as c:
            return await c.get("/metrics", headers=headers or {})

    return asyncio.run(go())


def test_metrics_from_elsewhere_need_the_key(tmp_path):
    (tmp_path / "keys").write_text(f"ops:{KEY}\n")
    (tmp_path / "m.gguf").write_bytes(b"")
    state = EngineState(engine_config_from_mapping({"model": str(tmp_path / "m.gguf"),
                                                    "api_keys_file": str(tmp_path / "keys")}))
    state.keys = KeyRing.load(tmp_path / "keys")
    app = create_app(state)
    assert _get(app, "192.0.2.7").status_code == 401
    assert _get(app, "192.0.2.7", {"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert _get(app, "127.0.0.1").status_code == 200
    assert _get(app, "::1").status_code == 200
