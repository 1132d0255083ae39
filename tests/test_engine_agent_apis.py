"""The Responses API (/v1/responses) and Anthropic Messages (/v1/messages) against the real engine
(issue 13), through the real clients: `openai` (client.responses.create / stream) and `anthropic`
(client.messages.create / stream). SmolLM2 (a real `aiboxctl serve` child with an API key) for
text, stop reasons, tools and JSON output — tiny, so a valid call or JSON object is the grammar's
doing; the real R1 tokenizer and template on a tiny model (test_engine_reasoning's seam) for the
thinking split."""

from __future__ import annotations

import json

import httpx
import pytest

from test_engine_support import running_server, smollm2_path
from test_engine_reasoning import REASONING, grammar_seam, r1, tiny_r1  # noqa: F401 - fixtures

jsonschema = pytest.importorskip("jsonschema")
anthropic = pytest.importorskip("anthropic")
openai = pytest.importorskip("openai")

KEY = "sk-agent-apis-1234"
CITY = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                         "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                           "age": {"type": "integer"},
                                           "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3}},
          "required": ["name", "age", "tags"], "additionalProperties": False}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("agents")
    (tmp / "keys").write_text(f"tester:{KEY}\n")
    config = {"model": smollm2_path(), "model_name": "smollm2", "n_ctx": 2048, "parallel": 2, "threads": 1,
              "flash_attn": "off", "kv_unified": False, "max_tokens_cap": 64, "queue_size": 4,
              "api_keys_file": str(tmp / "keys")}
    with running_server(tmp, config) as srv:
        yield srv


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=server.base + "/v1", api_key=KEY, max_retries=0)


@pytest.fixture(scope="module")
def claude(server):
    return anthropic.Anthropic(base_url=server.base, api_key=KEY, max_retries=0)  # sends x-api-key


def post(server, path: str, body: dict, **headers) -> httpx.Response:
    return httpx.post(server.base + path, json=body, headers={"Authorization": f"Bearer {KEY}", **headers},
                      timeout=120)


# --- the Responses API -----------------------------------------------------------------------

def test_responses_text_whole_and_streamed_agree(oai):
    ask = dict(model="smollm2", input="Say hello.", instructions="You are terse.", max_output_tokens=12,
               temperature=0)
    whole = oai.responses.create(**ask)
    assert whole.status in ("completed", "incomplete") and whole.output_text
    assert whole.usage.input_tokens > 0 and whole.usage.output_tokens > 0
    assert whole.usage.total_tokens == whole.usage.input_tokens + whole.usage.output_tokens
    with oai.responses.stream(**ask) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert final.output_text == whole.output_text  # greedy: the same answer, reassembled by the SDK
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert "response.output_text.delta" in kinds and kinds[-1] == "response.completed"
    assert final.status == whole.status
    # instructions reach the prompt: ten times as many make it longer
    longer = oai.responses.create(**{**ask, "instructions": "You are terse. " * 10})
    assert longer.usage.input_tokens > whole.usage.input_tokens + 20


def test_responses_hits_max_output_tokens_as_incomplete(server):
    r = post(server, "/v1/responses", {"input": "Tell me a long story.", "max_output_tokens": 3,
                                        "metadata": {"ticket": "T-1"}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["metadata"] == {"ticket": "T-1"}  # echoed, as the API does
    assert body["status"] == "incomplete" and body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["usage"]["output_tokens"] == 3


@pytest.mark.parametrize("choice", ["required", {"type": "function", "name": "get_weather"}])
def test_responses_forced_function_call_validates(oai, choice):
    tools = [{"type": "function", "name": "get_weather", "parameters": CITY, "strict": True},
             {"type": "function", "name": "get_time", "parameters": {"type": "object", "properties": {}}}]
    ask = dict(model="smollm2", input="What is the weather in Paris?", tools=tools, tool_choice=choice,
               parallel_tool_calls=False, max_output_tokens=48)
    whole = oai.responses.create(**ask)
    calls = [o for o in whole.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].call_id
    if isinstance(choice, dict):
        assert calls[0].name == "get_weather"
    if calls[0].name == "get_weather":
        jsonschema.validate(json.loads(calls[0].arguments), CITY)
    with oai.responses.stream(**ask) as stream:
        deltas = [e for e in stream if e.type == "response.function_call_arguments.delta"]
        final = stream.get_final_response()
    streamed = [o for o in final.output if o.type == "function_call"]
    assert len(streamed) == 1 and deltas and json.loads(streamed[0].arguments) is not None
    # the next turn: the call and its output go back as input items
    follow = oai.responses.create(model="smollm2", max_output_tokens=8, tools=tools, input=[
        {"role": "user", "content": "What is the weather in Paris?"},
        {"type": "function_call", "call_id": calls[0].call_id, "name": calls[0].name,
         "arguments": calls[0].arguments},
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": '{"temp": 21}'}])
    assert follow.status in ("completed", "incomplete")


def test_responses_json_schema_output_validates(oai):
    r = oai.responses.create(model="smollm2", input="Describe a person.", max_output_tokens=64, temperature=0.8,
                             text={"format": {"type": "json_schema", "name": "person", "schema": PERSON,
                                              "strict": True}})
    jsonschema.validate(json.loads(r.output_text), PERSON)


def test_responses_stream_options_include_obfuscation_is_accepted(server):
    """The one stream_options key of the Responses API is accepted (nothing is obfuscated here):
    the stream runs to its terminal event, as without it."""
    r = post(server, "/v1/responses", {"input": "Tell me a long story.", "max_output_tokens": 3, "stream": True,
                                        "stream_options": {"include_obfuscation": False}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.text
    kinds = [line[7:] for line in r.text.split("\n") if line.startswith("event: ")]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed", kinds
    last = json.loads(r.text.rstrip().rsplit("\ndata: ", 1)[1])
    assert last["response"]["status"] == "incomplete"  # at max_output_tokens, as the whole answer says


@pytest.mark.parametrize("fields, needle", [
    ({"previous_response_id": "resp_1"}, "previous_response_id"),
    ({"store": True}, "store"),
    ({"background": True}, "background"),
    ({"reasoning": {"summary": "auto"}}, "reasoning.summary"),
    ({"tools": [{"type": "web_search"}]}, "tools.0"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input_image"),
    ({"input": [{"type": "item_reference", "id": "x"}]}, "item_reference"),
    ({"input": []}, "input must not be empty"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "schema"),
    ({"seed": 1}, "seed"),  # not a Responses API field: refused, never silently ignored
    ({"temperature": 2.5}, "temperature"),
    ({"stream": True, "stream_options": {"include_usage": True}}, "stream_options"),  # chat's, not this API's
])
def test_responses_fields_not_honoured_are_400(server, fields, needle):
    r = post(server, "/v1/responses", {"input": "Hi", "max_output_tokens": 2, **fields})
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]["message"]


# --- Anthropic Messages ----------------------------------------------------------------------

def test_messages_text_whole_and_streamed_agree(claude):
    ask = dict(model="smollm2", max_tokens=12, temperature=0, system="You are terse.",
               messages=[{"role": "user", "content": "Say hello."}])
    whole = claude.messages.create(**ask)
    assert whole.content[0].type == "text" and whole.content[0].text
    assert whole.stop_reason in ("end_turn", "max_tokens") and whole.usage.input_tokens > 0
    with claude.messages.stream(**ask) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_message()
    assert final.content[0].text == whole.content[0].text and final.stop_reason == whole.stop_reason
    assert final.usage.output_tokens == whole.usage.output_tokens
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and "content_block_stop" in kinds


def test_messages_stop_reasons(claude):
    ask = dict(model="smollm2", temperature=0, messages=[{"role": "user", "content": "Count: 1, 2, 3, 4, 5, 6"}])
    text = claude.messages.create(max_tokens=16, **ask).content[0].text
    assert claude.messages.create(max_tokens=2, **ask).stop_reason == "max_tokens"
    stop = text.strip()[2:4]  # a piece of what the model writes, after its start
    cut = claude.messages.create(max_tokens=16, stop_sequences=["zzz", stop], **ask)
    assert (cut.stop_reason, cut.stop_sequence) == ("stop_sequence", stop)
    with claude.messages.stream(max_tokens=16, stop_sequences=[stop], **ask) as stream:
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", stop)


@pytest.mark.parametrize("choice", [{"type": "any"}, {"type": "tool", "name": "get_weather"}])
def test_messages_forced_tool_use_validates(claude, choice):
    tools = [{"name": "get_weather", "description": "The weather", "input_schema": CITY},
             {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}]
    ask = dict(model="smollm2", max_tokens=48, tools=tools, tool_choice={**choice, "disable_parallel_tool_use": True},
               messages=[{"role": "user", "content": "What is the weather in Paris?"}])
    whole = claude.messages.create(**ask)
    uses = [b for b in whole.content if b.type == "tool_use"]
    assert whole.stop_reason == "tool_use" and len(uses) == 1
    if uses[0].name == "get_weather":
        jsonschema.validate(uses[0].input, CITY)
    with claude.messages.stream(**ask) as stream:
        final = stream.get_final_message()
    streamed = [b for b in final.content if b.type == "tool_use"]
    assert final.stop_reason == "tool_use" and len(streamed) == 1 and isinstance(streamed[0].input, dict)
    # the next turn: tool_use and tool_result blocks go back
    follow = claude.messages.create(model="smollm2", max_tokens=8, tools=tools, messages=[
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": uses[0].id, "name": uses[0].name,
                                           "input": uses[0].input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "21 C"},
                                     {"type": "text", "text": "Thanks. Summarise.", "cache_control": {"type": "ephemeral"}}]}])
    assert follow.stop_reason in ("end_turn", "max_tokens")


@pytest.mark.parametrize("fields, needle", [
    ({"max_tokens": None}, "max_tokens"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, "image"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools.0"),
    ({"tool_choice": {"type": "tool"}}, "tool_choice"),
    ({"tool_choice": {"type": "any"}}, "tool_choice 'required' needs tools"),
    ({"thinking": {"type": "enabled"}}, "budget_tokens"),
    ({"mcp_servers": [{}]}, "mcp_servers"),
    ({"temperature": 1.5}, "temperature"),
    ({"frequency_penalty": 1}, "frequency_penalty"),  # not an Anthropic field: refused, never ignored
])
def test_messages_errors_are_400_in_anthropics_shape(server, claude, fields, needle):
    body = {"max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}], **fields}
    r = post(server, "/v1/messages", {k: v for k, v in body.items() if v is not None})
    assert r.status_code == 400, r.text
    err = r.json()
    assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
    assert needle in err["error"]["message"]


def test_keys_x_api_key_and_anthropic_errors(server):
    ask = {"max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]}
    assert httpx.post(server.base + "/v1/messages", json=ask, headers={"x-api-key": KEY}).status_code == 200
    r = httpx.post(server.base + "/v1/messages", json=ask, headers={"x-api-key": "wrong"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    wrong = anthropic.Anthropic(base_url=server.base, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        wrong.messages.create(model="smollm2", **ask)
    r = httpx.post(server.base + "/v1/responses", json={"input": "Hi"}, headers={"x-api-key": "wrong"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"  # OpenAI's shape there


# --- thinking (the real R1 tokenizer and template) --------------------------------------------

def test_thinking_split_in_both_shapes(r1):
    # test_engine_reasoning's seam gives a request whose user is "opens" the grammar of a reply that
    # thinks (real <think> tokens) and then answers
    r = httpx.post(r1.base + "/v1/responses", json={"input": "What is 2 + 2?", "user": "opens", "temperature": 0,
                                                    "max_output_tokens": 64}, timeout=120).json()
    assert [o["type"] for o in r["output"]] == ["reasoning", "message"]
    assert r["output"][0]["content"][0]["text"] == REASONING
    assert r["output"][1]["content"][0]["text"] == "2 + 2 = 4."
    assert r["usage"]["output_tokens_details"]["reasoning_tokens"] > 0
    client = openai.OpenAI(base_url=r1.base + "/v1", api_key="none", max_retries=0)
    with client.responses.stream(model="tiny-r1", input="What is 2 + 2?", user="opens", temperature=0,
                                 max_output_tokens=64) as stream:
        thinking = "".join(e.delta for e in stream if e.type == "response.reasoning_text.delta")
        final = stream.get_final_response()
    assert thinking == REASONING and final.output_text == "2 + 2 = 4."
    claude = anthropic.Anthropic(base_url=r1.base, api_key="none", max_retries=0)
    ask = dict(model="tiny-r1", max_tokens=64, temperature=0, metadata={"user_id": "opens"},
               thinking={"type": "enabled", "budget_tokens": 60},
               messages=[{"role": "user", "content": "What is 2 + 2?"}])
    m = claude.messages.create(**ask)
    assert [(b.type, getattr(b, "thinking", None) or getattr(b, "text", None)) for b in m.content] == [
        ("thinking", REASONING), ("text", "2 + 2 = 4.")]
    with claude.messages.stream(**ask) as stream:
        kinds = [e.delta.type for e in stream if e.type == "content_block_delta"]
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"] and final.content[1].text == "2 + 2 = 4."
    assert kinds == sorted(kinds, key=lambda k: k != "thinking_delta")  # all the thinking, then the answer
