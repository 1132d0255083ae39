"""The gateway's adapter for governed access: 401/403/429 in OpenAI's shape with Retry-After
through a real FastAPI app, and usage read from relayed JSON and SSE bytes."""

from __future__ import annotations

import json

import pytest
from fastapi import Request  # module level: FastAPI reads the routes' annotations here

from aiboxctl.access.gate import AccessControl, AccessSettings
from aiboxctl.access.keys import KeyLimits, KeyStore
from aiboxctl.access.ledger import iter_records
from aiboxctl.gateway.access import AccessGate, UsageMeter, with_usage_in_stream

ROUTES = {"/v1/chat/completions": ("chat", "chat")}


@pytest.fixture
def setup(tmp_path):
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from fastapi.testclient import TestClient

    store = KeyStore(tmp_path / "keys.json")
    alice = store.add("alice", KeyLimits(models=("qwen",), rpm=2, department="legal"), now=0).secret
    admin = store.add("ops", KeyLimits(admin=True), now=0).secret
    access = AccessControl(AccessSettings(keys_file=tmp_path / "keys.json", ledger_file=tmp_path / "usage.db",
                                          audit_file=tmp_path / "audit.jsonl"))
    gate = AccessGate(access, routes=ROUTES)
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        raw = await request.body()
        refusal = await gate(request, json.loads(raw), len(raw))
        if refusal is not None:
            return JSONResponse(refusal.body(), status_code=refusal.status, headers=refusal.headers())
        answer = {"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 7}}
        meter = UsageMeter()
        meter.feed(json.dumps(answer).encode())
        await gate.finish(request.state.aibox_admission, 200, meter)
        return answer

    @app.get("/metrics")
    async def metrics(request: Request):
        refusal = await gate(request)
        return JSONResponse(refusal.body(), status_code=refusal.status) if refusal else {"ok": True}

    with TestClient(app) as client:
        yield client, alice, admin, tmp_path
    access.close()


def test_gate_statuses_and_ledger(setup):
    client, alice, admin, tmp_path = setup
    body = {"model": "qwen", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    r = client.post("/v1/chat/completions", json={**body, "model": "deepseek"}, headers={"Authorization": f"Bearer {alice}"})
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
    for _ in range(2):
        assert client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {alice}"}).status_code == 200
    r = client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {alice}"})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1 and "requests per minute" in r.json()["error"]["message"]
    assert client.get("/metrics", headers={"Authorization": f"Bearer {alice}"}).status_code == 403
    assert client.get("/metrics", headers={"Authorization": f"Bearer {admin}"}).status_code == 200
    rows = list(iter_records(tmp_path / "usage.db"))
    ok = [r for r in rows if r.status == 200]
    assert len(ok) == 2 and all(r.prompt_tokens == 11 and r.completion_tokens == 7 and r.department == "legal" for r in ok)
    assert sorted(r.status for r in rows) == [200, 200, 403, 429]


def test_usage_meter_reads_sse_split_across_chunks():
    stream = (b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n'
              b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8}}\n\n'
              b"data: [DONE]\n\n")
    meter = UsageMeter()
    for i in range(0, len(stream), 7):
        meter.feed(stream[i:i + 7])
    assert meter.usage() == {"prompt_tokens": 5, "completion_tokens": 3}
    assert UsageMeter().usage() == {"prompt_tokens": 0, "completion_tokens": 0}


def test_streams_ask_for_the_usage_chunk():
    assert with_usage_in_stream({"stream": True})["stream_options"] == {"include_usage": True}
    assert with_usage_in_stream({"stream": False}) is None
    assert with_usage_in_stream({"stream": True, "stream_options": {"include_usage": True}}) is None


def test_an_oversized_body_is_refused_before_the_front_door_holds_it(tmp_path):
    """With keys on, a chunked body far over max_body_bytes is refused with 413 after reading at
    most the limit (the gate once read the whole body into memory first, for anyone, key or not)."""
    import asyncio

    from aiboxctl.gateway.app import ROUTES as ALL_ROUTES
    from aiboxctl.gateway.app import create_app
    from aiboxctl.gateway.config import EngineEntry, GatewayConfig

    KeyStore(tmp_path / "keys.json").add("alice", KeyLimits(), now=0)
    access = AccessControl(AccessSettings(keys_file=tmp_path / "keys.json"))
    limit, chunk, chunks = 4096, b"x" * 1024, 1000
    config = GatewayConfig(engines=(EngineEntry(name="e", models=("m",), url="http://127.0.0.1:9"),),
                           max_body_bytes=limit)
    app = create_app(config, gate=AccessGate(access, routes=ALL_ROUTES))
    received, sent = [0], []

    async def receive():
        received[0] += 1
        return {"type": "http.request", "body": chunk, "more_body": received[0] < chunks}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions", "query_string": b"",
             "headers": [(b"content-type", b"application/json")], "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 80)}
    asyncio.run(app(scope, receive, send))
    access.close()
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"]["code"] == "request_too_large"
    assert received[0] * len(chunk) <= limit + len(chunk), f"read {received[0]} KiB for a {limit} byte limit"


def test_loopback_port_defaults_beside_tls_and_is_checked():
    from aiboxctl.datafile import DataFileError
    from aiboxctl.gateway.config import gateway_config_from_text

    engines = "engines: [{name: c, models: [m], url: 'http://127.0.0.1:8081'}]\n"
    assert gateway_config_from_text("port: 8080\n" + engines).plain_loopback_port is None  # plain already
    assert gateway_config_from_text("port: 8080\ntls_dir: /t\n" + engines).plain_loopback_port == 9080
    assert gateway_config_from_text("port: 65000\ntls_dir: /t\n" + engines).plain_loopback_port == 64000
    assert gateway_config_from_text("tls_dir: /t\nloopback_port: 0\n" + engines).plain_loopback_port is None
    for bad, why in [("loopback_port: 9000\n", "needs tls_dir"), ("tls_dir: /t\nloopback_port: 8081\n", "engine c"),
                     ("tls_dir: /t\nloopback_port: 8080\n", "HTTPS port")]:
        with pytest.raises(DataFileError, match=why):
            gateway_config_from_text("port: 8080\n" + bad + engines)
