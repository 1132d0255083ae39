"""The tool-call parsers (engine/tools) against replies written in each family's published
format, fed in random chunkings: the split into content and calls is the same however the text
is cut, markers never leak into content, and what does not parse as a call stays text."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiboxctl.engine.structured import SchemaError
from aiboxctl.engine.tools import FORMATS, ToolReader, format_for, forced_grammar, prepare

NAMES = frozenset({"get_weather", "get_time"})
W = {"city": "Paris", "unit": "celsius"}
T = {"zone": "Asia/Shanghai"}
DS_B, DS_E = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
DC_B, DC_E, SEP = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>"

# (format, reply, expected content, expected calls as (name, arguments))
CASES = [
    ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>',
     "", [("get_weather", W)]),
    ("hermes", 'Let me check both.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": '
     '"celsius"}}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {"zone": "Asia/Shanghai"}}\n'
     '</tool_call>', "Let me check both.", [("get_weather", W), ("get_time", T)]),
    ("hermes", "The answer is 42. No tools needed.", "The answer is 42. No tools needed.", []),
    ("hermes", '<tool_call>\n{"name": "rm_rf", "arguments": {}}\n</tool_call>',
     '<tool_call>\n{"name": "rm_rf", "arguments": {}}\n</tool_call>', []),  # unknown function: text
    ("hermes", "<tool_call>\n{not json}\n</tool_call> then text", "<tool_call>\n{not json}\n</tool_call> then text", []),
    ("hermes", '<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}',  # cut at max_tokens
     "", [("get_time", {"zone": "UTC"})]),
    ("hermes", "a < b and <tool but not a call", "a < b and <tool but not a call", []),
    ("llama3_json", '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}', "",
     [("get_weather", W)]),
    ("llama3_json", '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}; '
     '{"name": "get_time", "parameters": {"zone": "Asia/Shanghai"}}', "", [("get_weather", W), ("get_time", T)]),
    ("llama3_json", "It is sunny in Paris today.", "It is sunny in Paris today.", []),
    ("llama3_json", '{"answer": 42}', '{"answer": 42}', []),
    ("glm4", 'get_weather\n{"city": "Paris", "unit": "celsius"}', "", [("get_weather", W)]),
    ("glm4", "get the weather yourself", "get the weather yourself", []),
    ("glm4", "get_weather is a tool I could call.", "get_weather is a tool I could call.", []),
    ("deepseek_v3", f'{DS_B}{DC_B}function{SEP}get_weather\n```json\n{json.dumps(W)}\n```{DC_E}'
     f'{DC_B}function{SEP}get_time\n```json\n{json.dumps(T)}\n```{DC_E}{DS_E}', "",
     [("get_weather", W), ("get_time", T)]),
    ("deepseek_v3", f'好的，我来查一下。{DS_B}{DC_B}get_time{SEP}{json.dumps(T)}{DC_E}{DS_E}', "好的，我来查一下。",
     [("get_time", T)]),  # V3.1's shape
    ("deepseek_v3", f"{DS_B}{DC_B}function{SEP}get_weather\n```json\n{{broken\n```{DC_E}{DS_E}",
     f"{DS_B}{DC_B}function{SEP}get_weather\n```json\n{{broken\n```{DC_E}{DS_E}", []),
]
MARKERS = ("<tool_call>", "</tool_call>", DS_B, DS_E, DC_B, "<|python_tag|>")


def _run(fmt_name: str, pieces: list[str]) -> tuple[str, list[tuple[str, dict]]]:
    reader = ToolReader(FORMATS[fmt_name](), NAMES)
    content, calls = [], []
    for p in pieces:
        c, k = reader.feed(p)
        content.append(c)
        calls += k
    c, k = reader.finish()
    content.append(c)
    calls += k
    assert all(call.id.startswith("call_") for call in calls)
    return "".join(content), [(c.name, json.loads(c.arguments)) for c in calls]


def _cut(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    return [text[a:b] for a, b in zip([0, *points], [*points, len(text)])]


@pytest.mark.parametrize("fmt, reply, content, calls", CASES)
def test_whole_reply(fmt, reply, content, calls):
    assert _run(fmt, [reply]) == (content, calls)


@pytest.mark.parametrize("fmt, reply, content, calls", CASES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_any_chunking_gives_the_same_split(fmt, reply, content, calls, cuts):
    got_content, got_calls = _run(fmt, _cut(reply, cuts))
    assert (got_content, got_calls) == (content, calls)
    if calls:
        assert not any(m in got_content for m in MARKERS)


def test_format_is_picked_from_the_template():
    assert format_for("{{ '<tool_call>' }} {% if tools %}").name == "hermes"
    assert format_for("<|start_header_id|>{{ m }}").name == "llama3_json"
    assert format_for("[gMASK]<sop>").name == "glm4"
    assert format_for("<｜User｜>{{ x }}<｜Assistant｜>").name == "deepseek_v3"
    assert format_for("<|im_start|>{{ m }}").name == "hermes"  # no tool format: taught Hermes
    with pytest.raises(ValueError):
        format_for("", "nope")


def test_template_without_tools_is_taught_the_format_and_sees_history():
    fmt = FORMATS["hermes"]()
    tools = [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]
    msgs = [{"role": "user", "content": "time?"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": '{"zone": "UTC"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "12:00"}]
    out, extra = prepare(msgs, tools, fmt, renders_tools=False)
    assert extra == {} and out[0]["role"] == "system" and "get_time" in out[0]["content"]
    assert '<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}\n</tool_call>' == out[2]["content"]
    assert out[3] == {"role": "user", "content": "<tool_response>\n12:00\n</tool_response>"}
    out, extra = prepare(msgs, tools, fmt, renders_tools=True)  # transformers' way: arguments as objects
    assert extra == {"tools": tools} and out[1]["tool_calls"][0]["function"]["arguments"] == {"zone": "UTC"}
    with pytest.raises(ValueError):
        prepare([{"role": "assistant", "tool_calls": [{"function": {"name": "x", "arguments": "{oops"}}]}],
                None, fmt, renders_tools=True)


@pytest.fixture(scope="module")
def vocab():
    """SmolLM2's vocabulary alone (no weights): what llama.cpp's grammar parser needs."""
    import llama_cpp as L

    from test_engine_support import smollm2_path

    L.llama_backend_init()
    params = L.llama_model_default_params()
    params.vocab_only = True
    model = L.llama_model_load_from_file(str(smollm2_path()).encode(), params)
    assert model
    yield L, L.llama_model_get_vocab(model)
    L.llama_model_free(model)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_forced_grammar_for_every_format_is_gbnf_llama_cpp_accepts(fmt, vocab):
    L, v = vocab
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
             {"type": "function", "function": {"name": "get_time"}}]
    for only, parallel in ((None, True), (None, False), ("get_time", True)):
        g = forced_grammar(FORMATS[fmt](), tools, only=only, parallel=parallel)
        sampler = L.llama_sampler_init_grammar(v, g.encode(), b"root")
        assert sampler, g
        L.llama_sampler_free(sampler)
    with pytest.raises(SchemaError, match="minimum"):
        forced_grammar(FORMATS[fmt](), [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}}}}], only=None, parallel=False)
