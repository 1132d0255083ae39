"""`aiboxctl serve` with gemma-3-270m (SWA, 262k vocab, no chat template in the GGUF), its
self-test forced to crash while repacking is on: the server must come up on the fallback,
say so in /health, and still produce llama-cpp-python's greedy tokens."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from test_engine_support import gemma_path, reference_llama, running_server

PROMPT = "The history of the Roman Empire begins"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve-gemma")
    # kv_unified off: each slot's cells are its own, laid out as when it runs alone, so greedy
    # tokens are bit-identical with and without neighbours (a shared cache interleaves cells and
    # changes the order of the attention sums)
    config = {"model": gemma_path(), "model_name": "gemma-3-270m", "n_ctx": 1024, "parallel": 4,
              "threads": 1, "flash_attn": "off", "repack": True, "kv_unified": False}
    # the child crashes (SIGSEGV) while repack is on, as AMX repacking does on some CPUs
    with running_server(tmp, config, env={"AIBOX_SELFTEST_FAULT": "repack"}) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.base, timeout=300) as c:
        yield c


def test_selftest_fallback_is_taken_and_recorded(http, server):
    h = http.get("/health").json()
    assert h["status"] == "ok"
    assert h["fallback"] == "repack-off" and "SIGSEGV" in h["fallback_reason"]
    assert [a["name"] for a in h["selftest"]] == ["configured", "repack-off"]
    assert h["selftest"][0]["ok"] is False and h["repack"] is False
    assert "repack-off" in server.log()  # and in the log


def test_greedy_completion_equals_llama_cpp_alone_and_with_three_concurrent(http):
    repack = http.get("/health").json()["repack"]
    ref = reference_llama(gemma_path(), repack=repack, n_ctx=256, n_batch=512, n_ubatch=512, n_threads=1, n_threads_batch=1,
                          flash_attn=False)
    want = ref(PROMPT, max_tokens=32, temperature=0, repeat_penalty=1.0)
    del ref
    assert want["usage"]["completion_tokens"] == 32
    body = {"prompt": PROMPT, "max_tokens": 32, "temperature": 0}
    alone = http.post("/v1/completions", json=body).json()
    assert alone["usage"]["completion_tokens"] == 32
    assert alone["choices"][0]["text"] == want["choices"][0]["text"]
    others = [{"prompt": p, "max_tokens": 40, "temperature": 0.9, "seed": 7}
              for p in ("Once upon a time", "def fibonacci(n):", "The recipe calls for")]
    with ThreadPoolExecutor(4) as pool:
        busy = [pool.submit(http.post, "/v1/completions", json=o) for o in others]
        mine = pool.submit(http.post, "/v1/completions", json=body)
        assert mine.result().json()["choices"][0]["text"] == want["choices"][0]["text"]
        assert all(b.result().status_code == 200 for b in busy)


def test_chat_uses_the_catalog_gemma_template(http):
    assert http.get("/health").json()["chat_template"] == "catalog:gemma"
    r = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hello"}],
                                                 "max_tokens": 8, "temperature": 0})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] >= 5


def test_prefix_of_a_repeated_prompt_is_reused(http):
    def reused() -> float:
        from prometheus_client.parser import text_string_to_metric_families

        for f in text_string_to_metric_families(http.get("/metrics").text):
            if f.name == "aibox_prefix_reused_tokens":
                return f.samples[0].value
        raise AssertionError("no prefix metric")

    system = "You are a careful assistant for a city office. Answer briefly and politely. " * 3
    before = reused()
    for q in ("What are the opening hours?", "Where do I renew a passport?"):
        http.post("/v1/completions", json={"prompt": system + q, "max_tokens": 2, "temperature": 0})
    assert reused() - before >= 30  # the second request skipped the shared system prompt
