"""Tool calls streamed the way OpenAI streams them (issue 13): for a format that allows it
(Hermes) the call's header (index, id, type, name) first, then ``function.arguments`` fragments
as they are written. Whatever the chunking, reassembling the deltas by index (as the openai SDK
does) gives the same content and calls as the whole reply. The recorded replies are
test_tool_parsers' CASES; the lazy grammar's text trigger is checked on SmolLM2's vocabulary."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiboxctl.engine.api.serving_chat import _CallStream
from aiboxctl.engine.tools import FORMATS, ToolReader
from test_tool_parsers import CASES, NAMES, _cut


def _stream(fmt: str, pieces: list[str]) -> tuple[str, list[dict], list[int]]:
    """(content, calls reassembled by index, argument fragments per call) from the deltas."""
    s = _CallStream(ToolReader(FORMATS[fmt](), NAMES))
    content, calls, frags = [], {}, {}
    deltas = [s.delta(p) for p in pieces] + [s.closing()]
    for d in deltas:
        content.append(d.get("content") or "")
        seen = set()
        for tc in d.get("tool_calls") or ():
            assert tc["index"] not in seen  # one entry per call and delta
            seen.add(tc["index"])
            if "id" in tc:  # the first delta of a call: id, type and name, once
                assert tc["index"] not in calls and tc["type"] == "function" and tc["id"].startswith("call_")
                calls[tc["index"]] = {"name": tc["function"]["name"], "arguments": ""}
            else:
                assert "name" not in tc["function"]
            if tc["function"].get("arguments"):
                calls[tc["index"]]["arguments"] += tc["function"]["arguments"]
                frags[tc["index"]] = frags.get(tc["index"], 0) + 1
    assert sorted(calls) == list(range(len(calls)))
    return "".join(content), [calls[i] for i in sorted(calls)], [frags.get(i, 0) for i in sorted(calls)]


def _whole(fmt: str, reply: str) -> tuple[str, list[dict]]:
    content, calls = _CallStream(ToolReader(FORMATS[fmt](), NAMES)).whole(reply)
    return content, [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]} for c in calls]


@pytest.mark.parametrize("fmt, reply, content, calls", CASES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=16))
def test_streamed_deltas_reassemble_to_the_whole_answer(fmt, reply, content, calls, cuts):
    got_content, got_calls, _ = _stream(fmt, _cut(reply, cuts))
    assert (got_content, got_calls) == _whole(fmt, reply)
    assert [(c["name"], json.loads(c["arguments"])) for c in got_calls] == calls


@pytest.mark.parametrize("fmt, reply, content, calls", [c for c in CASES if c[0] == "hermes" and c[3]])
def test_hermes_arguments_arrive_piecewise(fmt, reply, content, calls):
    pieces = [reply[i:i + 3] for i in range(0, len(reply), 3)]  # a few characters per token
    got_content, got_calls, frags = _stream(fmt, pieces)
    assert all(n > 3 for n in frags), frags
    # the arguments as the model wrote them, in both shapes
    assert [c["arguments"] for c in got_calls] == [c["arguments"] for c in _whole(fmt, reply)[1]]


def test_lazy_grammar_holds_from_a_text_trigger():
    """SmolLM2 writes <tool_call> as several tokens: the trigger is a pattern over the text.
    Before it every token passes; after it only what continues a valid call."""
    import llama_cpp as L

    from aiboxctl.engine.sampler import GrammarSampling
    from aiboxctl.engine.tools import forced_grammar
    from test_engine_support import smollm2_path

    L.llama_backend_init()
    params = L.llama_model_default_params()
    params.vocab_only = True
    model = L.llama_model_load_from_file(str(smollm2_path()).encode(), params)
    assert model
    vocab = L.llama_model_get_vocab(model)

    def tokens(text: str) -> list[int]:
        arr = (L.llama_token * 64)()
        return list(arr[:L.llama_tokenize(vocab, text.encode(), len(text.encode()), arr, 64, False, True)])

    tools = [{"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}}}]
    g = forced_grammar(FORMATS["hermes"](), tools, only=None, parallel=False)
    assert len(tokens("<tool_call>")) > 1
    lazy = GrammarSampling(L, vocab, L.llama_vocab_n_tokens(vocab), g, ("<tool_call>",))
    try:
        junk = tokens(" banana")[0]
        for t in tokens("Let me look. <tool_call>"):
            assert lazy.allows(t) and lazy.allows(junk)  # free until the marker
            L.llama_sampler_accept(lazy.grammar, t)
        assert not lazy.allows(junk)  # now held: only a call
        assert lazy.allows(tokens("\n")[0])
    finally:
        lazy.free()
        L.llama_model_free(model)
