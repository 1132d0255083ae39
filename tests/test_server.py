"""`aiboxctl serve` end to end with the real engine and SmolLM2-135M-Instruct (chat template
in the GGUF): the OpenAI client, greedy equality with llama-cpp-python's high-level API,
concurrency, usage counts, disconnects, UTF-8 streaming, stop strings, auth, limits, metrics,
audit log, SIGTERM. One server for the whole module."""

from __future__ import annotations

import json
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from test_engine_support import reference_llama, running_server, smollm2_path, wait_until

KEY = "sk-test-7f3a9c"
PARALLEL = 4
QUEUE = 4
CHAT = [{"role": "user", "content": "Write a long story about a brave knight and a dragon."}]


# One thread: a CI box is shared, and two OpenMP threads that wait for each other on
# oversubscribed cores slow decoding by an order of magnitude.
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    (tmp / "keys").write_text(f"tester:{KEY}\n")
    config = {"model": smollm2_path(), "model_name": "smollm2", "n_ctx": 2048, "parallel": PARALLEL,
              "queue_size": QUEUE, "threads": 1, "flash_attn": "off", "api_keys_file": tmp / "keys",
              "audit_log": tmp / "audit.jsonl", "max_tokens_cap": 256, "kv_unified": False}
    with running_server(tmp, config) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.base, headers={"Authorization": f"Bearer {KEY}"}, timeout=300) as c:
        yield c


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url, api_key=KEY, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def reference(http):
    """llama-cpp-python's high-level Llama on the same file and weight layout: the greedy anchor."""
    return reference_llama(smollm2_path(), repack=http.get("/health").json()["repack"], n_ctx=512,
                           n_batch=512, n_ubatch=512, n_threads=1, n_threads_batch=1, flash_attn=False, seed=0)


def test_health_reports_slots_and_selftest(server):
    h = httpx.get(server.base + "/health").json()  # no key needed for health checks
    assert h["status"] == "ok" and h["model"] == "smollm2"
    assert h["slots_total"] == PARALLEL and h["slots_free"] + h["slots_busy"] == PARALLEL
    assert h["chat_template"] == "gguf"
    assert h["selftest"] and h["selftest"][-1]["ok"] is True
    assert h["slot_ctx"] == 2048 // PARALLEL


def test_openai_client_models_chat_and_stream(client):
    assert [m.id for m in client.models.list().data] == ["smollm2"]
    r = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Hi!"}],
                                       max_tokens=12, temperature=0)
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content
    assert r.usage.completion_tokens <= 12 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    pieces, finish, usage = [], None, None
    for chunk in client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Hi!"}],
                                                max_tokens=12, temperature=0, stream=True,
                                                stream_options={"include_usage": True}):
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            pieces.append(c.delta.content or "")
            finish = c.finish_reason or finish
    assert "".join(pieces) == r.choices[0].message.content
    assert finish == r.choices[0].finish_reason and usage.completion_tokens == r.usage.completion_tokens
    c = client.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=8, temperature=0)
    assert c.choices[0].text and c.usage.prompt_tokens > 0


def _chat_text(client, max_tokens=32):
    r = client.chat.completions.create(model="smollm2", messages=CHAT, max_tokens=max_tokens, temperature=0)
    return r.choices[0].message.content, r.usage.completion_tokens


def test_greedy_chat_equals_llama_cpp_high_level(client, reference):
    want = reference.create_chat_completion(messages=CHAT, max_tokens=32, temperature=0, repeat_penalty=1.0)
    assert want["usage"]["completion_tokens"] == 32  # the anchor really ran 32 tokens
    alone, n = _chat_text(client)
    assert n == 32 and alone == want["choices"][0]["message"]["content"]
    # alone and while three other requests share the batch (kv_unified off: see test_engine_gemma)
    with ThreadPoolExecutor(4) as pool:
        others = [pool.submit(client.chat.completions.create, model="smollm2", max_tokens=24, temperature=0.8,
                              seed=i, messages=[{"role": "user", "content": f"Tell me fact number {i} about cats."}])
                  for i in range(3)]
        mine = pool.submit(_chat_text, client)
        assert mine.result() == (alone, 32)
        assert all(o.result().usage.completion_tokens > 0 for o in others)


def test_eight_concurrent_streams_complete_with_correct_usage(server, http):
    def stream(i: int) -> tuple[int, str, dict]:
        body = {"prompt": f"Story {i}: Once upon a time", "max_tokens": 24, "temperature": 0.7, "seed": i,
                "stream": True, "stream_options": {"include_usage": True}}
        text, usage, chunks = [], None, 0
        with http.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                obj = json.loads(line[6:])
                if obj.get("usage"):
                    usage = obj["usage"]
                for c in obj["choices"]:
                    text.append(c["text"])
                    chunks += 1
        return chunks, "".join(text), usage

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(stream, range(8)))
    for chunks, text, usage in results:
        assert usage is not None and chunks >= 1
        assert 1 <= usage["completion_tokens"] <= 24
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # the 8 prompts tokenise to the same length; usage must agree across them
    assert len({u["prompt_tokens"] for _, _, u in results}) == 1


def test_disconnected_stream_frees_its_slot(server, http):
    body = {"prompt": "Count from one to one thousand: one, two,", "max_tokens": 256, "temperature": 0,
            "stream": True}
    with http.stream("POST", "/v1/completions", json=body) as r:
        lines = r.iter_lines()
        got = 0
        for line in lines:
            if line.startswith("data: "):
                got += 1
            if got >= 3:
                break
        busy_while_streaming = http.get("/health").json()["slots_busy"]
    # leaving the block closed the connection mid-stream
    assert busy_while_streaming >= 1
    assert wait_until(lambda: http.get("/health").json()["slots_busy"] == 0)
    metrics = http.get("/metrics").text
    assert 'aibox_requests_total{endpoint="completions",status="499"}' in metrics


def test_chinese_streams_valid_utf8(http):
    body = {"prompt": "中文：你好，世界！中文：你好，世界！中文：你好，", "max_tokens": 24, "temperature": 0}
    whole = http.post("/v1/completions", json=body).json()["choices"][0]["text"]
    raw = b""
    with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        for chunk in r.iter_bytes():
            raw += chunk
    events = [json.loads(line[6:]) for line in raw.decode("utf-8").split("\n\n")  # strict decode
              if line.startswith("data: {")]
    streamed = "".join(c["text"] for e in events for c in e["choices"])
    assert any("\u4e00" <= ch <= "\u9fff" for ch in whole)  # the model really wrote Chinese
    assert streamed == whole and "\ufffd" not in streamed


def test_stop_string_cuts_the_output(http):
    body = {"prompt": "The capital of France is", "max_tokens": 24, "temperature": 0}
    full = http.post("/v1/completions", json=body).json()["choices"][0]["text"]
    words = full.split()
    assert len(words) >= 4
    stop = " " + words[2] + " " + words[3][:2]  # spans at least one token boundary
    cut = full.index(stop)
    r = http.post("/v1/completions", json={**body, "stop": [stop, "never-appears"]}).json()
    assert r["choices"][0]["text"] == full[:cut] and r["choices"][0]["finish_reason"] == "stop"
    streamed = []
    with http.stream("POST", "/v1/completions", json={**body, "stop": stop, "stream": True}) as s:
        for line in s.iter_lines():
            if line.startswith("data: {"):
                streamed += [c["text"] for c in json.loads(line[6:])["choices"]]
    assert "".join(streamed) == full[:cut]


def test_auth_rejects_missing_and_wrong_keys(server):
    body = {"prompt": "hi", "max_tokens": 1}
    r = httpx.post(server.url + "/completions", json=body)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert r.headers["www-authenticate"] == "Bearer"
    r = httpx.post(server.url + "/completions", json=body, headers={"Authorization": "Bearer sk-wrong"})
    assert r.status_code == 401
    assert httpx.get(server.url + "/models").status_code == 401
    assert KEY not in server.log()  # keys are never logged


def test_metrics_from_this_box_need_no_key(server):
    """A Prometheus on the box scrapes without the admin key (loopback only: see the remote
    refusal in test_metrics_from_elsewhere_need_the_key)."""
    r = httpx.get(server.base + "/metrics")
    assert r.status_code == 200 and "aibox_requests" in r.text


def test_access_log_line_per_request_without_content(server, http):
    http.post("/v1/completions", json={"prompt": "Access log probe: the sky is", "max_tokens": 3, "temperature": 0})
    httpx.post(server.url + "/completions", json={"prompt": "x", "max_tokens": 1})  # no key: 401
    assert wait_until(lambda: "access: completions key=tester" in server.log(), timeout=30)
    lines = [x for x in server.log().splitlines() if "aiboxctl.engine.access:" in x]
    ok = [x for x in lines if "key=tester" in x and "status=200" in x]
    assert ok and "model=smollm2" in ok[-1] and "completion_tokens=3" in ok[-1] and "duration_s=" in ok[-1]
    assert ok[-1][:4].isdigit()  # the time leads the line
    assert any("key=- " in x and "status=401" in x for x in lines)
    assert not any("sky is" in x or KEY in x for x in lines)


@pytest.mark.parametrize("body, needle", [
    ('{"prompt": "x", "max_tokens": "many"', "not valid JSON"),
    ('{"prompt": "x", "max_tokens": "many"}', "max_tokens"),
    ('{"prompt": "x", "temperature": 9}', "temperature"),
    ('{"messages": []}', None),
    ('[1, 2]', "JSON object"),
])
def test_bad_input_is_400_with_openai_error_body(http, body, needle):
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    r = http.post(path, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["message"]
    if needle:
        assert needle in err["message"]


def test_prompt_longer_than_a_slot_is_400_naming_the_limit(http):
    r = http.post("/v1/completions", json={"prompt": "word " * 1200, "max_tokens": 4})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded" and "512 tokens" in err["message"]


def test_max_tokens_is_capped(http):
    r = http.post("/v1/completions", json={"prompt": "1, 2, 3,", "max_tokens": 100000, "temperature": 0,
                                           "stop": []}).json()
    # The fixture's max_tokens_cap is 256: exactly that many, stopped by the cap.
    assert r["usage"]["completion_tokens"] == 256 and r["choices"][0]["finish_reason"] == "length"


def test_full_queue_answers_429_with_retry_after(http):
    body = {"prompt": "List every country in the world:", "max_tokens": 16, "temperature": 0}
    barrier = threading.Barrier(PARALLEL + QUEUE + 4)

    def one(_):
        barrier.wait()
        return http.post("/v1/completions", json=body)

    with ThreadPoolExecutor(PARALLEL + QUEUE + 4) as pool:
        responses = list(pool.map(one, range(PARALLEL + QUEUE + 4)))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(429) >= 1 and codes.count(200) >= PARALLEL
    limited = next(r for r in responses if r.status_code == 429)
    assert limited.headers["retry-after"] == "1" and limited.json()["error"]["type"] == "rate_limit_error"


def test_metrics_parse_with_prometheus_parser(http):
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(http.get("/metrics").text)}
    for name in ("aibox_requests", "aibox_prompt_tokens", "aibox_generated_tokens",
                 "aibox_time_to_first_token_seconds", "aibox_time_per_output_token_seconds",
                 "aibox_queue_depth", "aibox_slots_busy", "aibox_kv_cells_used"):
        assert name in families, name
    statuses = {s.labels["status"] for s in families["aibox_requests"].samples if s.name.endswith("_total")}
    assert {"200", "400", "401"} <= statuses
    ttft_count = [s.value for s in families["aibox_time_to_first_token_seconds"].samples
                  if s.name.endswith("_count")][0]
    assert ttft_count >= 1
    generated = [s.value for s in families["aibox_generated_tokens"].samples if s.name.endswith("_total")][0]
    assert generated >= 32


def test_audit_log_has_metadata_not_content_nor_keys(server):
    lines = [json.loads(x) for x in (server.log_path.parent / "audit.jsonl").read_text().splitlines()]
    assert lines
    ok = [x for x in lines if x["status"] == 200]
    assert ok and all(x["key_id"] == "tester" and "prompt_tokens" in x and "time" in x for x in ok)
    assert any(x["status"] == 400 for x in lines)
    text = json.dumps(lines)
    assert KEY not in text and "brave knight" not in text and "prompt" not in {k for x in lines for k in x}


def test_sigterm_stops_gracefully_with_exit_0(server):
    assert server.stop(signal.SIGTERM) == 0
    assert "Shutting down" in server.log()
