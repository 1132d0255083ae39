"""The front door against real engines: two SmolLM2 replicas of one model and a gemma engine
(real `aiboxctl serve` children that trust only the front door's internal token) behind a real
`aiboxctl gateway` child. Routing, /v1/models, 404/400/429 shapes, balancing spread, affinity
(with the engine's prefix reuse as the proof), byte-exact streaming, disconnect freeing the
engine's slot, failover when a replica is killed and its return after a restart.

Bounded for a 2-core box: one thread per engine, repack and the self-test off, short answers."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from test_engine_support import (SERVER_START_TIMEOUT, Server, _die_with_parent, free_port, gemma_path, smollm2_path,
                                 wait_until)

TOKEN = "internal-7d1e0c"
SLOTS = 2
QUEUE = 2


@contextlib.contextmanager
def _engine(tmp: Path, name: str, model: Path, served: str, port: int, **extra):
    """`aiboxctl serve` on a given loopback port (a restart must come back where the front door
    looks for it), yielded once its /health is 200."""
    d = tmp / name
    d.mkdir(exist_ok=True)
    cfg = {"model": str(model), "model_name": served, "host": "127.0.0.1", "port": port, "n_ctx": 1024,
           "parallel": SLOTS, "threads": 1, "repack": False, "selftest": False, "flash_attn": "off",
           "kv_unified": False, "api_keys_file": str(tmp / "engine-keys"), "max_tokens_cap": 512, **extra}
    (d / "engine.yaml").write_text(yaml.safe_dump(cfg))
    with open(d / "serve.log", "ab") as log:
        proc = subprocess.Popen([str(Path(sys.executable).with_name("aiboxctl")), "serve", "--config",
                                 str(d / "engine.yaml")], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    server = Server(proc, f"http://127.0.0.1:{port}", cfg, d / "serve.log")
    try:
        def up() -> bool:
            assert proc.poll() is None, server.log()[-3000:]
            try:
                return httpx.get(server.base + "/health", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_until(up, timeout=SERVER_START_TIMEOUT, interval=0.3), server.log()[-3000:]
        yield server
    finally:
        server.stop()


class Stack:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ports = {"chat-0": free_port(), "chat-1": free_port(), "gemma-0": free_port()}
        self.engines: dict = {}
        self.stacks: dict[str, contextlib.ExitStack] = {}

    def start_engine(self, name: str) -> None:
        stack = self.stacks[name] = contextlib.ExitStack()
        if name == "gemma-0":
            ctx = _engine(self.tmp, name, gemma_path(), "gemma", self.ports[name], parallel=1, n_ctx=256,
                          n_batch=64, n_ubatch=64)
        else:
            ctx = _engine(self.tmp, name, smollm2_path(), "smollm2", self.ports[name])
        self.engines[name] = stack.enter_context(ctx)

    def kill_engine(self, name: str) -> None:
        self.engines[name].proc.kill()
        self.engines[name].proc.wait()
        self.stacks.pop(name).close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gateway")
    (tmp / "engine-keys").write_text(f"gateway:{TOKEN}\n")
    st = Stack(tmp)
    try:
        for name in st.ports:
            st.start_engine(name)
        gw_port = free_port()
        config = {"port": gw_port, "internal_token_file": "engine-keys", "queue_depth": QUEUE,
                  "queue_timeout_s": 2, "retry_after_s": 3, "health_interval_s": 0.5, "affinity_slack": 1,
                  "engines": [{"name": n, "models": ["gemma" if n == "gemma-0" else "smollm2"],
                               "url": f"http://127.0.0.1:{p}"} for n, p in st.ports.items()]}
        (tmp / "gateway.yaml").write_text(yaml.safe_dump(config))
        log = open(tmp / "gateway.log", "wb")
        proc = subprocess.Popen([str(Path(sys.executable).with_name("aiboxctl")), "gateway", "--config",
                                 str(tmp / "gateway.yaml")], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=dict(os.environ), preexec_fn=_die_with_parent)
        st.gateway, st.base = proc, f"http://127.0.0.1:{gw_port}"

        def up() -> bool:
            assert proc.poll() is None, (tmp / "gateway.log").read_text()
            try:
                return httpx.get(st.base + "/health", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_until(up, timeout=60), (tmp / "gateway.log").read_text()
        yield st
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, (tmp / "gateway.log").read_text()[-3000:]
    finally:
        for s in list(st.stacks.values()):
            s.close()


@pytest.fixture(scope="module")
def gw(stack):
    with httpx.Client(base_url=stack.base, timeout=300) as c:
        yield c


def _chat(text: str, max_tokens: int = 4, **extra) -> dict:
    return {"model": "smollm2", "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens,
            "temperature": 0, **extra}


def _engine_get(stack, name: str, path: str) -> httpx.Response:
    return httpx.get(stack.engines[name].base + path, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)


def test_models_lists_every_model_with_role_and_context(gw):
    data = {m["id"]: m for m in gw.get("/v1/models").json()["data"]}
    assert set(data) == {"smollm2", "gemma"}
    assert data["smollm2"]["role"] == "chat" and data["smollm2"]["context_length"] == 1024 // SLOTS
    assert data["smollm2"]["replicas"] == data["smollm2"]["replicas_healthy"] == 2
    assert data["gemma"]["context_length"] == 256


def test_routes_by_model_and_engines_trust_only_the_front_door(stack, gw):
    r = gw.post("/v1/chat/completions", json={**_chat("Hi"), "model": "gemma"})
    assert r.status_code == 200 and r.json()["model"] == "gemma" and r.headers["x-aibox-replica"] == "gemma-0"
    r = gw.post("/v1/completions", json={"model": "smollm2", "prompt": "One, two,", "max_tokens": 2})
    assert r.status_code == 200 and r.json()["model"] == "smollm2"
    assert r.headers["x-aibox-replica"] in ("chat-0", "chat-1")
    # the engine refuses a client without the internal token
    direct = httpx.post(stack.engines["chat-0"].base + "/v1/chat/completions", json=_chat("Hi"), timeout=30)
    assert direct.status_code == 401


def test_unknown_model_404_and_other_refusals_in_openai_shape(gw):
    r = gw.post("/v1/chat/completions", json={**_chat("Hi"), "model": "gpt-4"})
    assert r.status_code == 404
    assert r.json() == {"error": {"message": "The model 'gpt-4' does not exist", "type": "invalid_request_error",
                                  "param": "model", "code": "model_not_found"}}
    r = gw.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_required"  # two chat models here
    r = gw.post("/v1/embeddings", json={"model": "smollm2", "input": "x"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "wrong_model_role"
    r = gw.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


def test_concurrent_conversations_spread_over_the_replicas(gw):
    def one(i: int) -> str:
        r = gw.post("/v1/chat/completions", json=_chat(f"Tell me about the number {i}.", max_tokens=24))
        assert r.status_code == 200, r.text
        return r.headers["x-aibox-replica"]

    with ThreadPoolExecutor(4) as pool:
        used = list(pool.map(one, range(4)))
    assert sorted(used) == ["chat-0", "chat-0", "chat-1", "chat-1"], used


def test_a_conversation_stays_on_the_replica_holding_its_prefix(stack, gw):
    sys_msg = {"role": "system", "content": "You are a helpful assistant who answers in one short sentence. " * 4}
    messages = [sys_msg, {"role": "user", "content": "What is the capital of France?"}]
    r = gw.post("/v1/chat/completions", json={"model": "smollm2", "messages": messages, "max_tokens": 8,
                                              "temperature": 0})
    home = r.headers["x-aibox-replica"]
    reused = _prefix_reused(stack, home)
    for turn in ("And of Italy?", "And of Spain?"):
        messages += [r.json()["choices"][0]["message"], {"role": "user", "content": turn}]
        r = gw.post("/v1/chat/completions", json={"model": "smollm2", "messages": messages, "max_tokens": 8,
                                                  "temperature": 0})
        assert r.status_code == 200 and r.headers["x-aibox-replica"] == home
    assert _prefix_reused(stack, home) > reused  # the engine served the turns from its cached prefix
    # and a `user` sends every conversation of that user to one replica
    homes = {gw.post("/v1/chat/completions", json=_chat(f"Question {i}", max_tokens=1, user="alice"))
             .headers["x-aibox-replica"] for i in range(4)}
    assert len(homes) == 1


def _prefix_reused(stack, name: str) -> float:
    text = _engine_get(stack, name, "/metrics").text
    return float(re.search(r"^aibox_prefix_reused_tokens_total (\S+)$", text, re.M).group(1))


_VOLATILE = re.compile(rb'"(id|created)":("[^"]*"|\d+)')


def test_streaming_passes_through_byte_exact(stack, gw):
    body = {"model": "smollm2", "prompt": "The three primary colours are", "max_tokens": 24, "temperature": 0,
            "stream": True}
    with gw.stream("POST", "/v1/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        via = b"".join(r.iter_raw())
        replica = r.headers["x-aibox-replica"]
    direct = httpx.post(stack.engines[replica].base + "/v1/completions", json=body, timeout=120,
                        headers={"Authorization": f"Bearer {TOKEN}"}).content
    assert via.endswith(b"data: [DONE]\n\n") and via.count(b"data: ") > 5
    assert _VOLATILE.sub(rb'"\1":0', via) == _VOLATILE.sub(rb'"\1":0', direct)


def _busy(stack) -> int:
    return sum(_engine_get(stack, n, "/health").json()["slots_busy"] for n in ("chat-0", "chat-1"))


def _hold(gw, n: int):
    """n long streams through the front door, each read up to its first event (so each holds a
    slot), left open. Returns the open stream contexts."""
    body = {"model": "smollm2", "prompt": "Count from one to one thousand: one, two,", "max_tokens": 480,
            "temperature": 0, "ignore_eos": True, "stream": True}
    held = []
    for i in range(n):
        ctx = gw.stream("POST", "/v1/completions", json={**body, "user": f"holder-{i}"})
        r = ctx.__enter__()
        assert r.status_code == 200
        chunks = r.iter_raw()  # kept: a collected iterator would close the stream
        assert next(chunks).startswith(b"data: ")  # the first event came before the answer ended: not buffered
        held.append((ctx, chunks))
    return held


def test_client_disconnect_frees_the_engine_slot(stack, gw):
    held = _hold(gw, 1)
    assert _busy(stack) == 1
    held[0][0].__exit__(None, None, None)  # hang up mid-stream
    assert wait_until(lambda: _busy(stack) == 0)
    metrics = gw.get("/metrics").text
    assert re.search(r'aibox_gateway_requests_total\{endpoint="completions",model="smollm2",'
                     r'replica="chat-[01]",status="499"\} 1\.0', metrics), metrics


def test_all_slots_busy_queue_then_429_with_retry_after(stack, gw):
    held = _hold(gw, 2 * SLOTS)
    try:
        assert _busy(stack) == 2 * SLOTS
        with ThreadPoolExecutor(QUEUE) as pool:  # these wait in the queue ...
            waiting = [pool.submit(gw.post, "/v1/chat/completions", json=_chat(f"q{i}")) for i in range(QUEUE)]
            assert wait_until(lambda: 'aibox_gateway_queue_depth{model="smollm2"} 2.0' in gw.get("/metrics").text)
            full = gw.post("/v1/chat/completions", json=_chat("one too many"))  # ... this one is refused at once
            assert full.status_code == 429 and full.headers["retry-after"] == "3"
            assert full.json()["error"]["code"] == "queue_full" and full.json()["error"]["type"] == "rate_limit_error"
            timed_out = [f.result() for f in waiting]  # queue_timeout_s: 2, the holders run far longer
        assert [r.status_code for r in timed_out] == [429, 429]
        assert {r.json()["error"]["code"] for r in timed_out} == {"queue_timeout"}
    finally:
        for ctx, _ in held:
            ctx.__exit__(None, None, None)
    assert wait_until(lambda: _busy(stack) == 0)
    assert gw.post("/v1/chat/completions", json=_chat("after")).status_code == 200


def test_failover_when_a_replica_dies_and_its_return(stack, gw):
    stack.kill_engine("chat-1")
    try:
        for i in range(6):  # some of these are sent to chat-1 before the poller notices: retried on chat-0
            r = gw.post("/v1/chat/completions", json=_chat(f"Failover question {i}", max_tokens=2))
            assert r.status_code == 200 and r.headers["x-aibox-replica"] == "chat-0", r.text
        h = gw.get("/health")
        assert h.status_code == 200 and "chat-1" in h.json()["models"]["smollm2"]["down"]
    finally:
        stack.start_engine("chat-1")  # the same port, as systemd or the supervisor would restart it
    assert wait_until(lambda: gw.get("/health").json()["models"]["smollm2"]["healthy"] == 2)

    def spread() -> set:
        with ThreadPoolExecutor(2) as pool:
            return set(pool.map(lambda i: gw.post("/v1/chat/completions", json=_chat(f"back {i}", max_tokens=16))
                                .headers["x-aibox-replica"], range(2)))

    assert "chat-1" in spread() | spread()


def test_health_503_names_the_model_that_is_down(stack, gw):
    stack.kill_engine("gemma-0")
    assert wait_until(lambda: gw.get("/health").status_code == 503)
    body = gw.get("/health").json()
    assert body["models_down"] == ["gemma"] and body["models"]["smollm2"]["healthy"] == 2
    r = gw.post("/v1/chat/completions", json={**_chat("Hi"), "model": "gemma"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_unavailable" and r.headers["retry-after"]
