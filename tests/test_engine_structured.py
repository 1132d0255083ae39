"""Structured output and tool calls through the real engine with SmolLM2-135M-Instruct (issue 13):
too small to follow a schema or a tool format by itself, so every valid answer here is the
grammar's doing. One server for the module."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, Optional

import httpx
import pytest
from pydantic import BaseModel

from test_engine_support import running_server, smollm2_path

jsonschema = pytest.importorskip("jsonschema")

ASK = [{"role": "user", "content": "Describe a person you like."}]

SCHEMAS = {
    "object": {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                                "happy": {"type": "boolean"}},
               "required": ["name", "age", "happy"], "additionalProperties": False},
    "array": {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"},
                                                        "minItems": 2, "maxItems": 4}},
              "required": ["tags"], "additionalProperties": False},
    "enum": {"type": "object", "properties": {"colour": {"type": "string", "enum": ["red", "green", "blue"]},
                                              "size": {"enum": [1, 2, 3]}},
             "required": ["colour", "size"], "additionalProperties": False},
    "nested": {"type": "object", "properties": {
        "person": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                                    "address": {"$ref": "#/$defs/address"}},
                   "required": ["name", "address"], "additionalProperties": False},
        "scores": {"type": "array", "items": {"type": "number"}, "maxItems": 3}},
        "required": ["person", "scores"], "additionalProperties": False,
        "$defs": {"address": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                                               "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                              "required": ["city", "zip"], "additionalProperties": False}}},
    "optional": {"type": "object", "properties": {"a": {"type": "string", "maxLength": 10},
                                                  "b": {"anyOf": [{"type": "integer"}, {"type": "null"}]}},
                 "required": ["a"], "additionalProperties": False},
}

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 30}},
                                       "required": ["zone"], "additionalProperties": False}}}
TOOLS = [WEATHER, TIME]
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]


class Address(BaseModel):
    city: str
    country: Literal["France", "Germany", "Japan"]


class Person(BaseModel):
    name: str
    age: int
    address: Address
    nickname: Optional[str] = None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("structured")
    config = {"model": smollm2_path(), "model_name": "smollm2", "n_ctx": 4096, "parallel": 4, "threads": 1,
              "flash_attn": "off", "max_tokens_cap": 256, "kv_unified": False}
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


def _chat(http, **body) -> dict:
    r = http.post("/v1/chat/completions", json={"messages": ASK, "max_tokens": 200, **body})
    assert r.status_code == 200, r.text
    return r.json()


def _stream(http, **body) -> tuple[str, list[dict], str | None]:
    """(content, tool calls reassembled by index, finish_reason) from the SSE stream; the number
    of deltas that carried each call's arguments is left in ``_stream.fragments``."""
    content, calls, finish = [], {}, None
    fragments: dict[int, int] = {}
    with http.stream("POST", "/v1/chat/completions", json={"stream": True, **body}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for ch in json.loads(line[6:])["choices"]:
                d = ch["delta"]
                content.append(d.get("content") or "")
                for tc in d.get("tool_calls") or ():
                    slot = calls.setdefault(tc["index"], {"name": "", "arguments": ""})
                    slot["name"] += tc.get("function", {}).get("name") or ""
                    slot["arguments"] += tc.get("function", {}).get("arguments") or ""
                    fragments[tc["index"]] = fragments.get(tc["index"], 0) + bool(tc.get("function", {}).get("arguments"))
                finish = ch["finish_reason"] or finish
    _stream.fragments = [fragments[i] for i in sorted(calls)]
    return "".join(content), [calls[i] for i in sorted(calls)], finish


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_json_schema_output_validates(http, name):
    schema = SCHEMAS[name]
    out = _chat(http, temperature=0.9, seed=3, max_tokens=256,
                response_format={"type": "json_schema", "json_schema": {"name": name, "schema": schema,
                                                                       "strict": True}})
    choice = out["choices"][0]
    assert choice["finish_reason"] == "stop", choice
    jsonschema.validate(json.loads(choice["message"]["content"]), schema)


def test_json_object_is_an_object(http):
    out = _chat(http, temperature=0, max_tokens=256, response_format={"type": "json_object"},
                messages=[{"role": "user", "content": "Give your name and age as a JSON object."}])
    assert out["choices"][0]["finish_reason"] == "stop"
    assert isinstance(json.loads(out["choices"][0]["message"]["content"]), dict)


def test_free_text_is_not_json(http):
    """The anchor: without a grammar this model does not write JSON."""
    text = _chat(http, temperature=0, max_tokens=40)["choices"][0]["message"]["content"]
    with pytest.raises(ValueError):
        json.loads(text)


@pytest.mark.parametrize("schema, keyword", [
    ({"type": "integer", "minimum": 0}, "minimum"),
    ({"type": "string", "format": "email"}, "format"),
    ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "uniqueItems"),
    ({"$ref": "https://example.com/s.json"}, "$ref"),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]}, "required"),
])
def test_unsupported_schema_is_400_naming_the_keyword(http, schema, keyword):
    r = http.post("/v1/chat/completions", json={"messages": ASK, "response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": schema}}})
    assert r.status_code == 400
    err = r.json()["error"]
    assert keyword in err["message"] and err["param"] == "response_format"


@pytest.mark.parametrize("body, needle", [
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "nope"),
    ({"tool_choice": "required"}, "needs tools"),
    ({"top_logprobs": 3}, "logprobs"),
    ({"n": 2}, "n"),
])
def test_bad_tool_and_format_fields_are_400(http, body, needle):
    r = http.post("/v1/chat/completions", json={"messages": ASK, **body})
    assert r.status_code == 400 and needle in r.json()["error"]["message"]


def test_parse_returns_the_pydantic_object(client):
    r = client.chat.completions.parse(model="smollm2", messages=ASK, response_format=Person, temperature=0,
                                      max_tokens=200)
    person = r.choices[0].message.parsed
    assert isinstance(person, Person) and person.address.country in ("France", "Germany", "Japan")


def _args_valid(call: dict, tools=TOOLS) -> dict:
    fn = next(t["function"] for t in tools if t["function"]["name"] == call["name"])
    args = json.loads(call["arguments"])
    jsonschema.validate(args, fn["parameters"])
    return args


def test_tool_choice_required_makes_valid_calls(http):
    out = _chat(http, messages=ASK_WEATHER, tools=TOOLS, tool_choice="required", temperature=0)
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    calls = choice["message"]["tool_calls"]
    assert calls and all(c["type"] == "function" and c["id"].startswith("call_") for c in calls)
    for c in calls:
        _args_valid(c["function"])


def test_named_tool_choice_calls_that_function_once(http):
    out = _chat(http, messages=ASK_WEATHER, tools=TOOLS, temperature=0.7, seed=5,
                tool_choice={"type": "function", "function": {"name": "get_time"}})
    calls = out["choices"][0]["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_time"]
    _args_valid(calls[0]["function"])


def test_tool_choice_none_and_auto_answer_text(http):
    for choice in ("none", "auto"):
        msg = _chat(http, messages=ASK_WEATHER, tools=TOOLS, tool_choice=choice, temperature=0,
                    max_tokens=30)["choices"][0]["message"]
        assert msg["content"] and not msg.get("tool_calls")


def test_openai_sdk_round_trip_with_tool_results(client):
    r = client.chat.completions.create(model="smollm2", messages=ASK_WEATHER, tools=TOOLS, tool_choice="required",
                                       parallel_tool_calls=False, temperature=0, max_tokens=100)
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls" and len(msg.tool_calls) == 1
    history = ASK_WEATHER + [msg.model_dump(exclude_none=True),
                             {"role": "tool", "tool_call_id": msg.tool_calls[0].id, "content": "18 C, sunny"}]
    again = client.chat.completions.create(model="smollm2", messages=history, tools=TOOLS, temperature=0,
                                           max_tokens=30)
    assert again.choices[0].message.content


@pytest.mark.parametrize("extra", [
    {"tools": TOOLS, "tool_choice": "required"},
    {"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": SCHEMAS["nested"]}}},
    {"tools": TOOLS},
])
def test_streaming_reassembles_to_the_whole_answer(http, extra):
    body = {"messages": ASK_WEATHER, "max_tokens": 120, "temperature": 0.8, "seed": 11, **extra}
    whole = _chat(http, **body)["choices"][0]
    content, calls, finish = _stream(http, **body)
    assert finish == whole["finish_reason"]
    assert content == (whole["message"]["content"] or "")
    assert calls == [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
                     for c in whole["message"].get("tool_calls") or ()]
    if extra.get("tool_choice") == "required":  # the arguments arrive as they are written
        assert calls and all(n > 1 for n in _stream.fragments), _stream.fragments


def test_constrained_and_free_requests_side_by_side(http):
    schema = SCHEMAS["nested"]
    fmt = {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}
    free_alone = _chat(http, temperature=0, max_tokens=48)["choices"][0]["message"]["content"]
    with ThreadPoolExecutor(4) as pool:
        constrained = [pool.submit(_chat, http, temperature=0.8, seed=i, response_format=fmt) for i in range(2)]
        free = [pool.submit(_chat, http, temperature=0, max_tokens=48) for _ in range(2)]
        for f in constrained:
            jsonschema.validate(json.loads(f.result()["choices"][0]["message"]["content"]), schema)
        for f in free:
            assert f.result()["choices"][0]["message"]["content"] == free_alone
