"""Copies in the model search (issue 14): a configuration is judged with the profile's users
spread over the copies of it the box holds, so (bigger model, fewer copies) and (smaller model,
more copies) compete under the one objective — quality first, then the target speed per user."""

from __future__ import annotations

from aiboxctl.sizing.hardware_profiles import load_hardware_profile
from aiboxctl.sizing.planner import plan
from aiboxctl.sizing.profiles import load_use_case


def _plan(profile: str, hardware: str, model: str | None = None):
    return plan(load_use_case(profile), load_hardware_profile(hardware), model)


def test_a_bigger_model_in_two_copies_beats_a_smaller_one_in_eight():
    # healthcare: 8 users at 10 tok/s. Qwen3-235B on 4 K100s reads 8 users at once too slowly on
    # one copy, but the box holds two copies (4 users each): within the tolerance, and a higher
    # quality tier than Qwen3-32B on 8 single-card copies (what was planned before).
    p = _plan("healthcare", "hygon-k100-x8")
    chat = p.instances[0]
    assert p.variant == "qwen3-235b-a22b"
    assert (chat.replicas, len(chat.device_groups[0]), chat.streams_per_replica) == (2, 4, 4)
    assert "at 8 users over 2 copies (4 each)" in p.near_miss
    assert p.throughput.streams == 4 and chat.per_user_tok_s == p.throughput.per_user_tok_s


def test_a_smaller_model_in_more_copies_wins_when_the_bigger_one_stays_too_slow():
    # dev: 6 users at 15 tok/s on 8 MTT S4000. Qwen3-235B's 2 copies still give 9 tok/s each user;
    # Qwen3-32B Q4_K_M on one card, 6 copies (one user each), reaches the target's tolerance.
    p = _plan("dev", "mthreads-s4000-x8")
    chat = p.instances[0]
    assert (p.variant, p.quant) == ("qwen3-32b", "Q4_K_M")
    assert (chat.replicas, len(chat.device_groups[0]), chat.streams_per_replica) == (6, 1, 1)
    big = [r.reason for r in p.rejected if r.variant == "qwen3-235b-a22b" and r.kind == "speed"]
    assert any("at 6 users over 2 copies (3 each)" in r for r in big)

