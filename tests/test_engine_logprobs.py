"""Token log-probabilities (issue 13) through the real engine with SmolLM2-135M-Instruct: chat's
``logprobs``/``top_logprobs`` and the legacy completions ``logprobs``, whole and streamed, read by
the openai SDK. The reference is computed here, apart from the engine: the same model loaded with
llama.cpp's low-level API in this process, the same tokens decoded one at a time, and numpy's
log-softmax over each raw logits row."""

from __future__ import annotations

import ctypes
import json

import httpx
import numpy as np
import pytest

from test_engine_support import running_server, smollm2_path

PROMPT = "The capital of France is"
ASK = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("logprobs")
    config = {"model": smollm2_path(), "model_name": "smollm2", "n_ctx": 2048, "parallel": 2, "threads": 1,
              "max_tokens_cap": 128}
    with running_server(tmp, config) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.base, timeout=300) as c:
        yield c


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url, api_key="none", max_retries=0, timeout=300)


class Reference:
    """SmolLM2 in this process through llama.cpp's C API (repack off: this CI's CPU advertises AMX
    that faults), decoding one token per step like the server."""

    def __init__(self) -> None:
        import llama_cpp as L

        L.llama_backend_init()
        mp = L.llama_model_default_params()
        mp.use_extra_bufts = False
        self.L = L
        self.model = L.llama_model_load_from_file(str(smollm2_path()).encode(), mp)
        assert self.model
        cp = L.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_threads, cp.n_threads_batch = 512, 512, 1, 1
        self.ctx = L.llama_init_from_model(self.model, cp)
        assert self.ctx
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)

    def tokenize(self, text: str) -> list[int]:
        data = text.encode()
        arr = (self.L.llama_token * (len(data) + 8))()
        n = self.L.llama_tokenize(self.vocab, data, len(data), arr, len(arr), True, False)
        return list(arr[:n])

    def piece(self, t: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = self.L.llama_token_to_piece(self.vocab, t, buf, len(buf), 0, False)
        return buf.raw[:n]

    def greedy(self, prompt: list[int], n: int) -> list[tuple[int, np.ndarray]]:
        """(token, log-softmax of the row it was picked from) for n greedy steps."""
        L = self.L
        L.llama_memory_clear(L.llama_get_memory(self.ctx), True)
        out, feed, pos = [], list(prompt), 0
        for _ in range(n):
            arr = (L.llama_token * len(feed))(*feed)  # kept alive until the decode
            batch = L.llama_batch_get_one(arr, len(feed))
            assert L.llama_decode(self.ctx, batch) == 0
            pos += len(feed)
            row = np.ctypeslib.as_array(L.llama_get_logits_ith(self.ctx, -1), shape=(self.n_vocab,)).astype(np.float64)
            logp = row - (row.max() + np.log(np.exp(row - row.max()).sum()))
            t = int(row.argmax())
            out.append((t, logp))
            feed = [t]
        return out

    def close(self) -> None:
        self.L.llama_free(self.ctx)
        self.L.llama_model_free(self.model)


@pytest.fixture(scope="module")
def reference():
    ref = Reference()
    yield ref
    ref.close()


def test_completion_logprobs_are_the_models_log_softmax(http, reference):
    r = http.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 8, "temperature": 0, "logprobs": 5})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    lp = choice["logprobs"]
    n = len(lp["tokens"])
    assert n == 8 and len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) == n
    steps = reference.greedy(reference.tokenize(PROMPT), n)
    for i, (t, logp) in enumerate(steps):
        assert lp["tokens"][i] == reference.piece(t).decode()  # the same greedy token
        assert lp["token_logprobs"][i] == pytest.approx(logp[t], abs=2e-3)
        top = lp["top_logprobs"][i]
        assert len(top) == 5 and max(top.values()) == lp["token_logprobs"][i]  # greedy is top-1
        best5 = np.argsort(-logp, kind="stable")[:5]
        assert sorted(top.values(), reverse=True) == pytest.approx([logp[k] for k in best5], abs=2e-3)
    assert "".join(lp["tokens"]) == choice["text"]
    assert lp["text_offset"] == [sum(len(x) for x in lp["tokens"][:i]) for i in range(n)]


def test_completion_logprobs_streamed_equal_whole(http):
    body = {"prompt": PROMPT, "max_tokens": 8, "temperature": 0, "logprobs": 2}
    whole = http.post("/v1/completions", json=body).json()["choices"][0]["logprobs"]
    got: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                lp = json.loads(line[6:])["choices"][0]["logprobs"]
                for k in got:
                    got[k] += lp[k] if lp else []
    assert got["tokens"] == whole["tokens"] and got["text_offset"] == whole["text_offset"]
    assert got["token_logprobs"] == pytest.approx(whole["token_logprobs"], abs=2e-3)


def _check_chat_entries(content: list, top_n: int) -> None:
    assert content
    for e in content:
        assert bytes(e["bytes"]).decode("utf-8", "replace") == e["token"] or e["token"].startswith("bytes:")
        tops = e["top_logprobs"]
        assert len(tops) == top_n
        values = [x["logprob"] for x in tops]
        assert values == sorted(values, reverse=True) and all(v <= 0 for v in values)
        # temperature 0: the token written is the most likely one
        assert (tops[0]["token"], tops[0]["logprob"]) == (e["token"], e["logprob"])


def test_chat_logprobs_through_the_openai_sdk(client):
    r = client.chat.completions.create(model="smollm2", messages=ASK, max_tokens=80, temperature=0,
                                       logprobs=True, top_logprobs=3)
    c = r.choices[0]
    content = [e.model_dump() for e in c.logprobs.content]
    _check_chat_entries(content, 3)
    assert b"".join(bytes(e["bytes"]) for e in content).decode() == c.message.content
    with client.chat.completions.stream(model="smollm2", messages=ASK, max_tokens=80, temperature=0,
                                        logprobs=True, top_logprobs=3) as s:
        final = s.get_final_completion()
    streamed = [e.model_dump() for e in final.choices[0].logprobs.content]
    assert [e["token"] for e in streamed] == [e["token"] for e in content]
    assert [e["logprob"] for e in streamed] == pytest.approx([e["logprob"] for e in content], abs=2e-3)
    plain = client.chat.completions.create(model="smollm2", messages=ASK, max_tokens=4, temperature=0)
    assert plain.choices[0].logprobs is None  # not asked: null, as OpenAI answers
    only = client.chat.completions.create(model="smollm2", messages=ASK, max_tokens=4, temperature=0, logprobs=True)
    assert only.choices[0].logprobs.content and all(e.top_logprobs == [] for e in only.choices[0].logprobs.content)


def test_multibyte_text_bytes_are_exact(http):
    """A grammar makes the model write Chinese and Japanese: byte-level tokens split characters,
    and each token's ``bytes`` are its own, so their concatenation is the answer's UTF-8."""
    schema = {"type": "object", "properties": {"g": {"enum": ["你好，世界", "日本語のテキスト"]}}, "required": ["g"],
              "additionalProperties": False}
    r = http.post("/v1/chat/completions", json={
        "messages": ASK, "max_tokens": 60, "temperature": 0, "logprobs": True, "top_logprobs": 2,
        "response_format": {"type": "json_schema", "json_schema": {"name": "g", "schema": schema}}})
    assert r.status_code == 200, r.text
    c = r.json()["choices"][0]
    content = c["logprobs"]["content"]
    text = c["message"]["content"]
    assert json.loads(text)["g"] in schema["properties"]["g"]["enum"]
    assert b"".join(bytes(e["bytes"]) for e in content) == text.encode("utf-8")
    assert any(e["token"].startswith("bytes:") for e in content)  # a token that is part of a character


@pytest.mark.parametrize("path, body, needle", [
    ("/v1/chat/completions", {"messages": ASK, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("/v1/chat/completions", {"messages": ASK, "top_logprobs": 2}, "needs logprobs"),
    ("/v1/completions", {"prompt": PROMPT, "logprobs": 21}, "logprobs"),
])
def test_more_than_20_alternatives_is_400(http, path, body, needle):
    r = http.post(path, json=body)
    assert r.status_code == 400 and needle in r.json()["error"]["message"]
