"""The reasoning parsers against replies written in each family's published format, fed whole,
one character at a time and in random chunkings (hypothesis): the split is the same however the
text is cut, and the tags never reach the answer. Plus the per-request decisions (thinking
off, budgets, Qwen3's switches) and the multi-turn stripping, which need no model."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiboxctl.engine.reasoning import (
    PARSERS, Thinking, detect, get_parser, plan, strip_history, template_kwargs,
)

# (parser, prompt ended inside the thinking, reply as the model writes it, reasoning, content)
RECORDED = [
    # R1 with its current template: the prompt ends "<think>\n", the reply only closes it
    ("deepseek_r1", True,
     "Okay, so the user is asking what 2 + 2 is. That's simple: 2 plus 2 equals 4.\n</think>\n\n2 + 2 = **4**.",
     "Okay, so the user is asking what 2 + 2 is. That's simple: 2 plus 2 equals 4.", "2 + 2 = **4**."),
    # R1's first template (still in many GGUFs): the reply opens the thinking itself
    ("deepseek_r1", False,
     "<think>\n嗯，用户问的是中国的首都。这个很简单，是北京。\n</think>\n\n中国的首都是**北京**。",
     "嗯，用户问的是中国的首都。这个很简单，是北京。", "中国的首都是**北京**。"),
    # thinking cut by max_tokens: all of it is thinking, no answer
    ("deepseek_r1", True, "Okay, let me work through this step by step. First, if a < b and b </",
     "Okay, let me work through this step by step. First, if a < b and b </", ""),
    # an answer that contains text looking like a tag's start (HTML) is not held forever
    ("deepseek_r1", True, "The user wants a table header.\n</think>\n\nUse <thead> and </thead>: <th>Name</th>",
     "The user wants a table header.", "Use <thead> and </thead>: <th>Name</th>"),
    ("qwq", True,
     "Okay, let's see. The problem asks for the smallest prime greater than 3.\nThat is 5.\n</think>\n\n"
     "The answer is \\(\\boxed{5}\\).",
     "Okay, let's see. The problem asks for the smallest prime greater than 3.\nThat is 5.",
     "The answer is \\(\\boxed{5}\\)."),
    ("qwen3", False,
     "<think>\nOkay, the user said hello. I should greet them back.\n</think>\n\nHello! How can I help you today?",
     "Okay, the user said hello. I should greet them back.", "Hello! How can I help you today?"),
    # /no_think: the model writes an empty block itself
    ("qwen3", False, "<think>\n\n</think>\n\nHello! How can I help you today?", "", "Hello! How can I help you today?"),
    # enable_thinking false: the template wrote the empty block, the reply is all answer
    ("qwen3", False, "你好！有什么可以帮你的吗？", "", "你好！有什么可以帮你的吗？"),
    # a stop string inside the thinking
    ("qwen3", False, "<think>\nLet me count: 1, 2, 3", "Let me count: 1, 2, 3", ""),
    # Qwen3-Thinking-2507: the template opens the thinking
    ("qwen3", True, "The user asks for 3*7 = 21.\n</think>\n\n3 × 7 = 21", "The user asks for 3*7 = 21.", "3 × 7 = 21"),
    ("glm_z1", False, "<think>Okay, the user wants a line about spring.</think>\n春风拂面，万物复苏。",
     "Okay, the user wants a line about spring.", "春风拂面，万物复苏。"),
    ("glm_z1", True, "好的，用户想要一句关于春天的话。</think>春风拂面。", "好的，用户想要一句关于春天的话。", "春风拂面。"),
]


def split(name: str, inside: bool, pieces: list[str]) -> tuple[list[str], list[str]]:
    parser = get_parser(name)(inside=inside)
    reasoning, content = [], []
    for piece in pieces:
        r, c = parser.push(piece)
        reasoning.append(r)
        content.append(c)
    r, c = parser.finish()
    return reasoning + [r], content + [c]


@pytest.mark.parametrize("name,inside,reply,want_r,want_c", RECORDED)
def test_recorded_replies_split_whole_and_per_character(name, inside, reply, want_r, want_c):
    for pieces in ([reply], list(reply)):
        r, c = split(name, inside, pieces)
        assert ("".join(r), "".join(c)) == (want_r, want_c)
        assert not any("think>" in x for x in c)


@settings(max_examples=300, deadline=None)
@given(case=st.sampled_from(RECORDED), cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=30))
def test_split_does_not_depend_on_the_chunking(case, cuts):
    name, inside, reply, want_r, want_c = case
    bounds = sorted({min(c, len(reply)) for c in cuts} | {0, len(reply)})
    pieces = [reply[a:b] for a, b in zip(bounds, bounds[1:])]
    r, c = split(name, inside, pieces)
    assert ("".join(r), "".join(c)) == (want_r, want_c)
    assert "think>" not in "".join(c)


def test_a_partial_close_tag_is_held_until_it_can_be_told_apart():
    parser = get_parser("deepseek_r1")(inside=True)
    assert parser.push("Thinking</thi") == ("Thinking", "")
    assert parser.thinking
    assert parser.push("nk>\n\nAnswer") == ("", "Answer")
    assert not parser.thinking


def test_detect_by_setting_catalog_and_template():
    r1_old = "{{'<｜Assistant｜>' + content}}{% if '</think>' in content %}{% endif %}"
    assert detect("none", r1_old) is None
    assert detect("auto", r1_old).name == "deepseek_r1"
    assert detect("auto", "{{ enable_thinking }}<think>").name == "qwen3"
    assert detect("auto", "<|im_start|>assistant\n<think>\n").name == "qwq"
    assert detect("auto", "[gMASK]<sop><|assistant|>\n<think>").name == "glm_z1"
    assert detect("auto", "<|im_start|>assistant\n") is None  # ChatML without thinking
    # the catalog's chatml fallback says nothing about thinking; the catalog family does
    assert detect("auto", "<|im_start|>assistant\n", "qwq", True).name == "qwq"
    assert detect("auto", "<|im_start|>assistant\n", "qwen2.5", False) is None
    assert detect("qwen3", "").name == "qwen3"
    assert set(PARSERS) == {"deepseek_r1", "qwen3", "qwq", "glm_z1"}


def test_thinking_off_closes_the_prompt_and_the_reply_is_all_answer():
    r1 = get_parser("deepseek_r1")
    open_prompt = "<｜User｜>hi<｜Assistant｜><think>\n"
    req = plan(r1, open_prompt, on=False, budget=None)
    assert req.prompt == open_prompt + "\n</think>\n\n"
    assert req.parser.push("Hello.") == ("", "Hello.")
    old_prompt = "<｜User｜>hi<｜Assistant｜>"
    assert plan(r1, old_prompt, on=False, budget=None).prompt == old_prompt + "<think>\n\n</think>\n\n"
    closed = "<|im_start|>assistant\n<think>\n\n</think>\n\n"  # Qwen3's template with enable_thinking false
    assert plan(get_parser("qwen3"), closed, on=False, budget=None).prompt == closed
    on = plan(r1, open_prompt, on=True, budget=64)
    assert on.prompt == open_prompt and on.parser.thinking and on.budget == 64


def test_request_thinking_controls():
    assert Thinking.from_request(effort="low") == Thinking(None, 1024)
    assert Thinking.from_request(effort="high") == Thinking(None, None)
    assert Thinking.from_request(effort="none") == Thinking(False, None)
    assert Thinking.from_request(effort="low", budget=10) == Thinking(None, 10)  # explicit wins
    assert Thinking.from_request(budget=0) == Thinking(False, None)
    assert Thinking.from_request(budget=-1) == Thinking(None, None)  # llama-server: unlimited
    qwen3, r1 = get_parser("qwen3"), get_parser("deepseek_r1")
    talk = [{"role": "user", "content": "Explain /think"}, {"role": "assistant", "content": "x"},
            {"role": "user", "content": "Short answer please /no_think"}]
    assert template_kwargs(qwen3, Thinking(), talk) == ({"enable_thinking": False}, False)
    assert template_kwargs(qwen3, Thinking(True), talk) == ({"enable_thinking": True}, True)  # explicit wins
    assert template_kwargs(qwen3, Thinking(), talk[:1]) == ({"enable_thinking": True}, True)
    assert template_kwargs(qwen3, Thinking(), [{"role": "user", "content": "hi"}]) == ({"enable_thinking": True}, True)
    assert template_kwargs(r1, Thinking(False), talk) == ({}, False)


def test_history_loses_earlier_thinking():
    r1 = get_parser("deepseek_r1")
    history = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>\nsecret plan\n</think>\n\n4", "reasoning_content": "secret plan"},
        {"role": "assistant", "content": "4", "reasoning": "more"},
        {"role": "assistant", "content": "<think>\nnever closed"},
        {"role": "user", "content": "<think>user text stays</think>"},
    ]
    out = strip_history(history, r1)
    assert out[1] == {"role": "assistant", "content": "4"}
    assert out[2] == {"role": "assistant", "content": "4"}
    assert out[3] == {"role": "assistant", "content": ""}
    assert out[4] == history[4] and out[0] == history[0]


def test_reasoning_format_setting_is_checked():
    from aiboxctl.engine_settings import REASONING_FORMATS, EngineSettings
    from aiboxctl.engine.reasoning import FORMATS
    from aiboxctl.errors import UsageError

    assert FORMATS == REASONING_FORMATS
    assert EngineSettings(reasoning_format="none").reasoning_format == "none"
    with pytest.raises(UsageError, match="reasoning_format must be one of auto, none, deepseek_r1"):
        EngineSettings(reasoning_format="deepseek")
