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
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from test_engine_support import running_server, smollm2_path

CLIENT_TIMEOUT_S = 60  # a hang guard: the longest legitimate request here takes well under a second
FUZZ = settings(max_examples=40, deadline=None, database=None, derandomize=False, print_blob=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


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


# --- the fuzzer ------------------------------------------------------------------------------

JUNK = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
                 st.floats(), st.text(max_size=12), st.lists(st.integers(), max_size=3),
                 st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))


def field(valid, *boundary):
    return st.one_of(valid, st.sampled_from(boundary), JUNK) if boundary else st.one_of(valid, JUNK)


STOP_TEXT = st.text(st.characters(codec="utf-8"), max_size=6)
BIAS = st.dictionaries(st.integers(0, 49151).map(str), st.floats(-100, 100), max_size=5)
# field: (valid values, boundary values); every field also gets JUNK (wrong types, huge numbers…)
FIELDS = {
    "model": (st.text(max_size=10),),
    "max_tokens": (st.integers(1, 8), 0, -1, 2 ** 31, 10 ** 20),
    "temperature": (st.floats(0, 2), -0.1, 2.0001, 0.0, 1e308, math.nan, math.inf),
    "top_p": (st.floats(0, 1, exclude_min=True), 0.0, 1.0, 1.5, 1e-45),
    "top_k": (st.integers(0, 100), -1, 0, 2 ** 31, 10 ** 30),
    "min_p": (st.floats(0, 1), -1.0, 1.0, 1.1),
    "presence_penalty": (st.floats(-2, 2), -2.0, 2.0, -2.5, 2.5),
    "frequency_penalty": (st.floats(-2, 2), -2.0, 2.0, -2.5, 2.5),
    "repeat_penalty": (st.floats(0.01, 10), 0.0, -1.0, 1.0, 10.0, 11.0, 1e-30),
    "seed": (st.integers(-(2 ** 70), 2 ** 70),),
    "stop": (st.one_of(STOP_TEXT, st.lists(STOP_TEXT, max_size=16)), [], [""], "\x00", "\ud7ff", ["x"] * 17),
    "logit_bias": (BIAS, {}, {"-1": 1}, {"49152": 1}, {"x": 1}, {"0": 101}, {"2": 100}),
    "stream": (st.booleans(),),
    "stream_options": (st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),),
    "n": (st.just(1), 0, 2),
    "ignore_eos": (st.booleans(),),
    "user": (st.text(max_size=10),),
}
COMMON = {name: field(*spec) for name, spec in FIELDS.items()}
VALID_COMMON = {name: spec[0] for name, spec in FIELDS.items()}
ROLES = st.sampled_from(["system", "developer", "user", "assistant", "tool", "bogus"])
CONTENT = st.one_of(st.text(max_size=40), st.none(),
                    st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]),
                                                    "text": st.text(max_size=20)}), max_size=2), JUNK)
MESSAGES = field(st.lists(st.fixed_dictionaries({"role": ROLES, "content": CONTENT}), min_size=1, max_size=3),
                 [], [{"role": "user"}], [{"content": "hi"}])
PROMPT = field(st.one_of(st.text(max_size=40), st.lists(st.integers(-1, 50000), max_size=8),
                         st.lists(st.text(max_size=20), min_size=1, max_size=2)), "", [], [49151], [49152])

# half the bodies hold only valid values, so that many requests really reach the decode loop
CHAT_BODY = st.one_of(
    st.fixed_dictionaries({"messages": MESSAGES},
                          optional={**COMMON, "max_completion_tokens": field(st.integers(1, 8), 0, 10 ** 9)}),
    st.fixed_dictionaries({"messages": st.lists(st.fixed_dictionaries({"role": st.just("user"),
                                                                       "content": st.text(max_size=40)}),
                                                min_size=1, max_size=2)},
                          optional={**VALID_COMMON, "max_completion_tokens": st.integers(1, 8)}))
COMPLETION_BODY = st.one_of(
    st.fixed_dictionaries({"prompt": PROMPT}, optional={**COMMON, "echo": field(st.booleans())}),
    st.fixed_dictionaries({"prompt": st.one_of(st.text(min_size=1, max_size=40),
                                               st.lists(st.integers(0, 49151), min_size=1, max_size=8))},
                          optional=VALID_COMMON))


# the Responses API and Anthropic Messages (issue 13): every field of their bodies, as above
TEXT_PART = st.fixed_dictionaries({"type": st.sampled_from(["input_text", "output_text", "input_image", "bogus"]),
                                   "text": st.text(max_size=20)})
RESPONSE_ITEM = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "developer", "tool"]),
                           "content": st.one_of(st.text(max_size=30), st.lists(TEXT_PART, max_size=2), JUNK)},
                          optional={"type": st.just("message")}),
    st.fixed_dictionaries({"type": st.just("function_call"), "call_id": st.text(max_size=6),
                           "name": st.text(max_size=6), "arguments": st.one_of(st.just("{}"), JUNK)}),
    st.fixed_dictionaries({"type": st.just("function_call_output"), "call_id": st.text(max_size=6),
                           "output": st.one_of(st.text(max_size=10), JUNK)}),
    st.fixed_dictionaries({"type": st.sampled_from(["reasoning", "item_reference", "bogus"])}), JUNK)
SCHEMA = st.sampled_from([{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                          {"type": "object", "properties": {"a": {"type": "string", "format": "bogus-x"}}},
                          {"type": "string", "enum": ["x", "y"]}, {"not": {}}, {}])
FN_TOOL = st.fixed_dictionaries({"type": st.just("function"), "name": st.sampled_from(["f", "g", "bad name"])},
                                optional={"parameters": SCHEMA, "description": st.text(max_size=8),
                                          "strict": st.booleans()})
RESPONSES_FIELDS = {
    "model": field(st.text(max_size=10)),
    "input": field(st.one_of(st.text(max_size=40), st.lists(RESPONSE_ITEM, min_size=1, max_size=3)), "", []),
    "instructions": field(st.text(max_size=30)),
    "tools": field(st.lists(FN_TOOL, max_size=2), [], [{"type": "web_search"}]),
    "tool_choice": field(st.sampled_from(["none", "auto", "required", {"type": "function", "name": "f"}])),
    "parallel_tool_calls": field(st.booleans()),
    "text": field(st.fixed_dictionaries({"format": st.one_of(
        st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object"])}),
        st.fixed_dictionaries({"type": st.just("json_schema"), "name": st.just("x"), "schema": SCHEMA}))})),
    "reasoning": field(st.fixed_dictionaries({}, optional={"effort": st.sampled_from(["low", "high", "bogus"])})),
    "max_output_tokens": field(st.integers(1, 8), 0, -1, 10 ** 20),
    "temperature": field(st.floats(0, 2), -0.1, 2.5, math.nan),
    "top_p": field(st.floats(0, 1, exclude_min=True), 0.0, 1.5),
    "stream": field(st.booleans()),
    "store": field(st.booleans()),
    "include": field(st.just([]), ["reasoning.encrypted_content"]),
    "truncation": field(st.sampled_from(["disabled", "auto"])),
    "metadata": field(st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2)),
    "previous_response_id": field(st.text(max_size=6)),
    "user": field(st.text(max_size=6)),
}
BLOCK = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=20)},
                          optional={"cache_control": st.just({"type": "ephemeral"})}),
    st.fixed_dictionaries({"type": st.just("tool_use"), "id": st.text(max_size=5), "name": st.just("f"),
                           "input": st.one_of(st.just({}), JUNK)}),
    st.fixed_dictionaries({"type": st.just("tool_result"), "tool_use_id": st.text(max_size=5)},
                          optional={"content": st.one_of(st.text(max_size=10), JUNK), "is_error": st.booleans()}),
    st.fixed_dictionaries({"type": st.sampled_from(["thinking", "image", "document"]), "thinking": st.text(max_size=5)}))
ANTHROPIC_MESSAGES = field(st.lists(st.fixed_dictionaries({
    "role": st.sampled_from(["user", "assistant", "system"]),
    "content": st.one_of(st.text(max_size=30), st.lists(BLOCK, max_size=3), JUNK)}), min_size=1, max_size=3), [])
MESSAGES_FIELDS = {
    "model": field(st.text(max_size=10)),
    "system": field(st.one_of(st.text(max_size=20), st.lists(st.fixed_dictionaries(
        {"type": st.just("text"), "text": st.text(max_size=10)}), max_size=2))),
    "temperature": field(st.floats(0, 1), -0.1, 1.5, math.inf),
    "top_p": field(st.floats(0, 1, exclude_min=True), 0.0, 1.5),
    "top_k": field(st.integers(0, 100), -1, 10 ** 30),
    "stop_sequences": field(st.lists(STOP_TEXT, max_size=16), ["x"] * 17),
    "stream": field(st.booleans()),
    "metadata": field(st.fixed_dictionaries({}, optional={"user_id": st.text(max_size=5)})),
    "tools": field(st.lists(st.fixed_dictionaries({"name": st.sampled_from(["f", "g", "bad name"]),
                                                   "input_schema": SCHEMA}), max_size=2), [],
                   [{"type": "web_search_20250305", "name": "web_search"}]),
    "tool_choice": field(st.one_of(st.fixed_dictionaries({"type": st.sampled_from(["auto", "any", "none"])}),
                                   st.just({"type": "tool", "name": "f"}), st.just({"type": "tool"}))),
    "thinking": field(st.one_of(st.just({"type": "disabled"}),
                                st.fixed_dictionaries({"type": st.just("enabled"),
                                                       "budget_tokens": st.integers(-1, 100)}))),
    "service_tier": field(st.sampled_from(["auto", "standard_only", "priority"])),
}
RESPONSES_BODY = st.one_of(
    st.fixed_dictionaries({}, optional=RESPONSES_FIELDS),
    st.fixed_dictionaries({"input": st.text(min_size=1, max_size=40), "max_output_tokens": st.integers(1, 8)},
                          optional={"stream": st.booleans(), "instructions": st.text(max_size=20),
                                    "temperature": st.floats(0, 2)}))
MESSAGES_BODY = st.one_of(
    st.fixed_dictionaries({"max_tokens": field(st.integers(1, 8), 0, 10 ** 20), "messages": ANTHROPIC_MESSAGES},
                          optional=MESSAGES_FIELDS),
    st.fixed_dictionaries({"max_tokens": st.integers(1, 8), "messages": st.lists(st.fixed_dictionaries(
        {"role": st.just("user"), "content": st.text(max_size=40)}), min_size=1, max_size=1)},
                          optional={"stream": st.booleans(), "system": st.text(max_size=20),
                                    "stop_sequences": st.lists(STOP_TEXT, max_size=3)}))


def check(http: httpx.Client, path: str, body: dict) -> None:
    payload = json.dumps(body)
    with http.stream("POST", path, content=payload, headers={"Content-Type": "application/json"}) as r:
        raw = r.read()
    event(f"HTTP {r.status_code}")  # pytest --hypothesis-show-statistics shows how many reached the engine
    assert r.status_code < 500, (r.status_code, raw[:300], payload[:500])
    if r.status_code == 200 and path in ("/v1/responses", "/v1/messages"):
        if r.headers["content-type"].startswith("text/event-stream"):
            kinds = [ev.split("\n", 1)[0] for ev in raw.decode("utf-8").split("\n\n") if ev]
            last = "event: response.completed" if path == "/v1/responses" else "event: message_stop"
            assert kinds and kinds[-1] == last and "event: error" not in kinds, (raw[-300:], payload[:500])
        else:
            answer = json.loads(raw)
            if path == "/v1/responses":
                assert answer["status"] in ("completed", "incomplete"), raw[:300]
            else:
                assert answer["stop_reason"] in ("end_turn", "max_tokens", "stop_sequence", "tool_use"), raw[:300]
    elif r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"):
        events = [line[6:] for line in raw.decode("utf-8").split("\n\n") if line.startswith("data: ")]
        assert events and events[-1] == "[DONE]", raw[-300:]
        assert not any('"error"' in e[:10] for e in events), (raw[-300:], payload[:500])
    elif r.status_code == 200:
        assert json.loads(raw)["choices"][0]["finish_reason"] in ("stop", "length")
    else:
        assert 400 <= r.status_code < 500 and json.loads(raw)["error"]["message"]
    plain_request_works(http)


@FUZZ
@given(body=CHAT_BODY)
def test_fuzz_chat_completions(http, body):
    check(http, "/v1/chat/completions", body)


@FUZZ
@given(body=COMPLETION_BODY)
def test_fuzz_completions(http, body):
    check(http, "/v1/completions", body)


@FUZZ
@given(body=RESPONSES_BODY)
def test_fuzz_responses(http, body):
    check(http, "/v1/responses", body)


@FUZZ
@given(body=MESSAGES_BODY)
def test_fuzz_messages(http, body):
    check(http, "/v1/messages", body)
