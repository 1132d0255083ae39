"""Reasoning end to end with real DeepSeek-R1 tokens: the real R1-Distill-Qwen-7B tokenizer and
chat template on a tiny random-weight model (tests/r1tiny.py), served by the real engine and
HTTP app (in this process, so a test grammar can go in through the chat endpoint's grammar
seam, keyed by the request's ``user``). The grammar makes the noise model write the
``<think>…</think>answer`` shapes R1 writes, in the tokenizer's own tokens (``<think>`` and
``</think>`` are single tokens, 151648/151649)."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from r1tiny import header_path, read_tokenizer, write_tiny_r1
from test_engine_support import free_port

THINK, END_THINK = 151648, 151649
REASONING = "The user asks for 2 + 2. That is 4."
GRAMMARS = {
    # R1's first template ends the prompt with <｜Assistant｜>: the reply opens the thinking
    "opens": f'root ::= "<think>" "\\n" "{REASONING}" "\\n" "</think>" "\\n\\n" "2 + 2 = 4."',
    # the current template ends the prompt with <think>\n: the reply only closes it
    "inside": f'root ::= "{REASONING}" "\\n" "</think>" "\\n\\n" "2 + 2 = 4."',
    # thinking that goes on as long as it may (letters and spaces), then an answer
    "long": 'root ::= "<think>" [a-z ]+ "\\n" "</think>" "\\n\\n" "Four."',
    "answer": 'root ::= "Four."',
}
# the real special tokens wherever the grammar allows them
BIAS = {str(THINK): 100, str(END_THINK): 100}


@pytest.fixture(scope="module")
def tiny_r1(tmp_path_factory):
    return write_tiny_r1(tmp_path_factory.mktemp("r1") / "tiny-r1.gguf")


@pytest.fixture(scope="module")
def grammar_seam():
    """Requests whose ``user`` names a test grammar get it, through ChatServing.grammar."""
    from aiboxctl.engine.api.serving_chat import ChatServing

    original = ChatServing.grammar

    def grammar(self, body):
        return GRAMMARS.get(body.user or "") or original(self, body)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ChatServing, "grammar", grammar)
        yield


class InProcessServer:
    def __init__(self, model, **settings) -> None:
        import uvicorn

        from aiboxctl.engine.api.app import create_app
        from aiboxctl.engine.config import engine_config_from_mapping
        from aiboxctl.engine.state import EngineState

        port = free_port()
        config = engine_config_from_mapping({
            "model": str(model), "model_name": "tiny-r1", "port": port, "n_ctx": 2048, "parallel": 2,
            "threads": 1, "repack": False, "selftest": False, "max_tokens_cap": 512, **settings})
        self.state = EngineState(config)
        self.server = uvicorn.Server(uvicorn.Config(create_app(self.state), host="127.0.0.1", port=port,
                                                    log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.base = f"http://127.0.0.1:{port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 120  # a hang guard, not a timing assertion
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.base + "/health", timeout=5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            assert self.state.status != "failed", self.state.reason
            time.sleep(0.2)
        raise AssertionError(f"engine not healthy: {self.state.status} {self.state.reason}")

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(60)

    def chat(self, user: str, content: str = "What is 2 + 2?", **body):
        messages = body.pop("messages", [{"role": "user", "content": content}])
        body = {"messages": messages, "user": user, "temperature": 0, "max_tokens": 64,
                "logit_bias": BIAS, **body}
        r = httpx.post(self.base + "/v1/chat/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        return r.json()

    def stream(self, user: str, content: str = "What is 2 + 2?", **body):
        body = {"messages": [{"role": "user", "content": content}], "user": user, "temperature": 0,
                "max_tokens": 64, "logit_bias": BIAS, "stream": True, **body}
        deltas = []
        with httpx.stream("POST", self.base + "/v1/chat/completions", json=body, timeout=120) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    deltas += [c["delta"] for c in json.loads(line[6:])["choices"]]
        return deltas


@pytest.fixture(scope="module")
def r1(tiny_r1, grammar_seam):
    with InProcessServer(tiny_r1) as srv:
        yield srv


def test_gguf_template_reply_opens_and_closes_the_thinking(r1):
    a = r1.chat("opens")
    msg = a["choices"][0]["message"]
    assert msg["reasoning_content"] == REASONING
    assert msg["content"] == "2 + 2 = 4." and a["choices"][0]["finish_reason"] == "stop"
    answer_tokens = a["usage"]["completion_tokens"] - a["usage"]["completion_tokens_details"]["reasoning_tokens"]
    assert 2 <= answer_tokens <= len("</think>\n\n2 + 2 = 4.")  # </think>, "\n\n" and the answer's tokens
    deltas = r1.stream("opens")
    thinking = "".join(d.get("reasoning_content") or "" for d in deltas)
    answer = "".join(d.get("content") or "" for d in deltas)
    assert (thinking, answer) == (REASONING, "2 + 2 = 4.")
    assert not any("think>" in (d.get("content") or "") for d in deltas)
    kinds = [("r" if d.get("reasoning_content") else "c") for d in deltas if d.get("reasoning_content") or d.get("content")]
    assert kinds == sorted(kinds, reverse=True)  # all the thinking, then all the answer


def test_openai_sdk_sees_reasoning_content(r1):
    from openai import OpenAI

    client = OpenAI(base_url=r1.base + "/v1", api_key="none", max_retries=0)
    r = client.chat.completions.create(model="tiny-r1", messages=[{"role": "user", "content": "2 + 2?"}],
                                       user="opens", temperature=0, max_tokens=64, logit_bias=BIAS)
    assert r.choices[0].message.content == "2 + 2 = 4."
    assert r.choices[0].message.reasoning_content == REASONING


@pytest.fixture(scope="module")
def no_natural_close():
    """A bias that keeps the noise model from closing its thinking on its own: every token
    with a newline in it (byte-level BPE writes one as 'Ċ') is banned, and the grammar's close
    starts with one, so only the budget closes it (forced tokens are written, not sampled)."""
    tokens = read_tokenizer(header_path())["tokenizer.ggml.tokens"]
    banned = [i for i, t in enumerate(tokens) if "Ċ" in t]
    assert len(banned) > 100
    return {**BIAS, **{str(i): -100 for i in banned}}


def test_thinking_budget_closes_the_thinking_and_the_answer_follows(r1, no_natural_close):
    unbounded = r1.chat("long", max_tokens=40, logit_bias=no_natural_close)
    assert unbounded["choices"][0]["finish_reason"] == "length"  # it would think to the end
    assert unbounded["choices"][0]["message"]["content"] == ""
    budget = 8
    for body in ({"thinking_budget_tokens": budget}, {"reasoning_budget": budget}):
        a = r1.chat("long", max_tokens=40, logit_bias=no_natural_close, **body)
        msg, usage = a["choices"][0]["message"], a["usage"]
        assert msg["content"] == "Four." and a["choices"][0]["finish_reason"] == "stop"
        assert msg["reasoning_content"]
        # <think>, ≤ budget thinking tokens, the forced "\n</think>\n\n", then the answer
        assert usage["completion_tokens"] <= 1 + budget + 3 + len("Four.")
        # the opening <think> and the thinking, up to the budget (the forced "\n" still inside)
        assert budget <= usage["completion_tokens_details"]["reasoning_tokens"] <= budget + 1
    streamed = r1.stream("long", max_tokens=40, thinking_budget_tokens=budget, logit_bias=no_natural_close)
    assert "".join(d.get("content") or "" for d in streamed) == "Four."


def test_thinking_off_closes_the_prompt_block(r1):
    on = r1.chat("answer")
    for body in ({"reasoning_effort": "none"}, {"thinking_budget_tokens": 0}, {"enable_thinking": False},
                 {"chat_template_kwargs": {"enable_thinking": False}}):
        off = r1.chat("answer", **body)
        msg = off["choices"][0]["message"]
        assert msg["content"] == "Four." and msg["reasoning_content"] is None
        # <think>, "\n\n", </think>, "\n\n" were written into the prompt
        assert off["usage"]["prompt_tokens"] == on["usage"]["prompt_tokens"] + 4


def test_earlier_turns_thinking_is_not_fed_back(r1):
    def prompt_tokens(assistant: dict) -> int:
        messages = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", **assistant},
                    {"role": "user", "content": "And 3 + 3?"}]
        return r1.chat("answer", messages=messages)["usage"]["prompt_tokens"]

    clean = prompt_tokens({"content": "Four."})
    assert prompt_tokens({"content": "<think>\nsecret sum\n</think>\n\nFour."}) == clean
    assert prompt_tokens({"content": "Four.", "reasoning_content": "secret sum"}) == clean


def test_current_template_starts_inside_the_thinking(tiny_r1, grammar_seam):
    with InProcessServer(tiny_r1, chat_template="deepseek-r1") as srv:
        a = srv.chat("inside")
        msg = a["choices"][0]["message"]
        assert (msg["reasoning_content"], msg["content"]) == (REASONING, "2 + 2 = 4.")
        deltas = srv.stream("inside", max_tokens=6)  # cut inside the thinking
        assert "".join(d.get("content") or "" for d in deltas) == ""
        assert REASONING.startswith("".join(d.get("reasoning_content") or "" for d in deltas))


ANSWER_SCHEMA = {"type": "object", "properties": {"answer": {"enum": ["four", "five"]}, "sure": {"type": "boolean"}},
                 "required": ["answer", "sure"], "additionalProperties": False}


def test_json_output_after_thinking(tiny_r1, grammar_seam, no_natural_close):
    """response_format with a thinking model: the thinking stays free and the grammar holds from
    its end (a lazy grammar triggered by </think>), so the answer is the JSON. The noise model
    may not close its thinking (</think> and newlines banned): the budget closes it."""
    import jsonschema

    bias = {**no_natural_close, str(END_THINK): -100, str(THINK): -100}
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": ANSWER_SCHEMA, "strict": True}}
    with InProcessServer(tiny_r1, chat_template="deepseek-r1") as srv:
        a = srv.chat("", response_format=fmt, thinking_budget_tokens=6, max_tokens=60, logit_bias=bias)
        msg = a["choices"][0]["message"]
        assert msg["reasoning_content"] and a["usage"]["completion_tokens_details"]["reasoning_tokens"] >= 6
        jsonschema.validate(json.loads(msg["content"]), ANSWER_SCHEMA)
        assert a["choices"][0]["finish_reason"] == "stop"
        deltas = srv.stream("", response_format=fmt, thinking_budget_tokens=6, max_tokens=60, logit_bias=bias)
        assert "".join(d.get("content") or "" for d in deltas) == msg["content"]
        assert "".join(d.get("reasoning_content") or "" for d in deltas) == msg["reasoning_content"]
        # thinking off: the grammar holds from the first token, the reply is the JSON alone
        off = srv.chat("", response_format=fmt, reasoning_effort="none", max_tokens=60, logit_bias=bias)
        msg = off["choices"][0]["message"]
        assert msg["reasoning_content"] is None
        jsonschema.validate(json.loads(msg["content"]), ANSWER_SCHEMA)


def test_raw_setting_keeps_the_tags_in_content(tiny_r1, grammar_seam):
    with InProcessServer(tiny_r1, reasoning_format="none") as srv:
        msg = srv.chat("opens")["choices"][0]["message"]
        assert "reasoning_content" not in msg
        assert msg["content"] == f"<think>\n{REASONING}\n</think>\n\n2 + 2 = 4."


# a Qwen-style (Hermes) template: the R1-Distill-Qwen vocabulary writes <tool_call> as one token
HERMES_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                   "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}{# <tool_call> #}")
TOOL_CALL = 151657
PICK = {"type": "function", "function": {"name": "pick", "parameters": {
    "type": "object", "properties": {"colour": {"enum": ["red", "green"]}, "n": {"enum": [1, 2, 3]}},
    "required": ["colour", "n"], "additionalProperties": False}}}


def test_auto_tool_call_is_held_by_a_lazy_grammar_from_its_marker(tiny_r1, grammar_seam):
    """tool_choice auto: the reply is free until the model writes <tool_call> (here pushed by a
    bias), then the grammar holds it to a valid call — whole and streamed (the arguments in
    pieces), and the same calls either way."""
    import jsonschema

    bias = {str(TOOL_CALL): 100}
    with InProcessServer(tiny_r1, chat_template=HERMES_TEMPLATE) as srv:
        a = srv.chat("", tools=[PICK], tool_choice="auto", logit_bias=bias, max_tokens=60)
        choice = a["choices"][0]
        assert choice["finish_reason"] == "tool_calls", choice
        (call,) = choice["message"]["tool_calls"]
        jsonschema.validate(json.loads(call["function"]["arguments"]), PICK["function"]["parameters"])
        deltas = srv.stream("", tools=[PICK], tool_choice="auto", logit_bias=bias, max_tokens=60)
        parts = [tc for d in deltas for tc in d.get("tool_calls") or ()]
        assert parts[0]["function"]["name"] == "pick" and all(p["index"] == 0 for p in parts)
        assert "".join(p["function"].get("arguments") or "" for p in parts) == call["function"]["arguments"]
        assert sum(1 for p in parts if p["function"].get("arguments")) > 1
        # without the marker the reply is free text (the grammar never started)
        free = srv.chat("", tools=[PICK], tool_choice="auto", max_tokens=8,
                        logit_bias={str(TOOL_CALL): -100, **BIAS})
        assert not free["choices"][0]["message"].get("tool_calls")
