"""The planner's objective (docs/planning.md "The objective") on the shipped hardware profiles:
a near miss on speed beats a large loss of quality and is said; the profile's family order counts
within a quality tier; a 1-2 bit quantization loses to a model that keeps its quality; time to
first token counts for profiles that read documents; assumed efficiencies give estimated ranges;
aliases resolve; --users/--target-tok-s/--ctx override the profile."""

from __future__ import annotations

from dataclasses import replace

import pytest

from aiboxctl.errors import DoesNotFit, UsageError
from aiboxctl.models.catalog import load_catalog
from aiboxctl.sizing.hardware_profiles import load_hardware_profile
from aiboxctl.sizing.planner import plan
from aiboxctl.sizing.profiles import load_use_case


def _plan(profile: str, hardware: str, model: str | None = None, **changes):
    return plan(replace(load_use_case(profile), **changes), load_hardware_profile(hardware), model)


def test_a_near_miss_on_speed_beats_a_two_bit_quant_and_is_said():
    # 6.3 tok/s: the H800s' measured per-stream cost puts R1 Q4_K_M at 20 users just under it (at
    # the profile's 8 it is beyond the tolerance and the 2-bit file is taken, as below).
    p = _plan("gov-office", "h800-x8", "deepseek-r1", target_tokens_per_s=6.3)
    assert (p.variant, p.quant) == ("deepseek-r1-671b", "Q4_K_M")
    assert 6.3 * 0.9 <= p.throughput.per_user_tok_s < 6.3
    assert p.near_miss.startswith(f"{p.throughput.per_user_tok_s:.1f} of 6.3 tok/s per user at 20 users")
    assert p.to_dict()["throughput"]["near_miss"] == p.near_miss
    assert any(n.startswith("near miss: ") for n in p.notes)
    # Not tried, not silently dropped to: the 2-bit files come after a quantization that keeps quality.
    low = {r.quant: r for r in p.rejected if r.variant == "deepseek-r1-671b"}
    assert low["UD-Q2_K_XL"].kind == "preference" and low["UD-IQ1_S"].kind == "preference"
    # Beyond the tolerance the miss is a miss: the profile's 8 tok/s takes the 2-bit file.
    far = _plan("gov-office", "h800-x8", "deepseek-r1")
    assert far.quant.startswith("UD-") and not far.near_miss


def test_the_profile_family_order_wins_within_a_quality_tier():
    p = _plan("gov-office", "h800-x8")  # lists deepseek-r1-distill-qwen first, qwen3 (235B) second
    assert p.family == "deepseek-r1-distill-qwen" and p.quality == "high"
    qwen = [r for r in p.rejected if r.variant == "qwen3-235b-a22b"]
    assert qwen and all(r.kind == "preference" for r in qwen)
    # Reordered, the same box takes the bigger Qwen3.
    q = _plan("gov-office", "h800-x8", families=("qwen3", "deepseek-r1-distill-qwen"))
    assert q.variant == "qwen3-235b-a22b"


def test_a_degraded_quant_loses_to_a_model_that_keeps_its_quality():
    # finance lists deepseek-r1 first, but on 2 x A100 it fits only at 1-2 bits per weight.
    p = _plan("finance", "a100-80g-x2")
    assert (p.variant, p.quant) == ("qwq-32b", "Q8_0")


def test_time_to_first_token_counts_for_profiles_that_read_documents():
    p = _plan("edge", "cpu-256g")
    late = [r for r in p.rejected if r.kind == "ttft"]
    assert late and all("first token too late" in r.reason and "1024-token document" in r.reason for r in late)
    assert p.first_token_s is not None and p.first_token_s <= 30 * 1.1
    assert p.to_dict()["throughput"]["first_token_s"] == round(p.first_token_s, 1)
    # Chat only: the same box may take the slower-to-read 32B dense model.
    chat = _plan("edge", "cpu-256g", document_tokens=None)
    assert chat.first_token_s is None and chat.variant != p.variant


def test_document_tokens_is_schema_checked(tmp_path):
    path = tmp_path / "docs.yaml"
    path.write_text("name: d\ndescription: x\nusers: 2\ncontext_per_request: 2048\ntarget_tokens_per_s: 5\n"
                    "document_tokens: 4096\n", encoding="utf-8")
    with pytest.raises(Exception) as info:
        load_use_case(path)
    assert f"{path}:6: document_tokens:" in str(info.value) and "do not fit in context_per_request" in str(info.value)


@pytest.mark.parametrize("hardware", ["ascend-910b-x8", "hygon-k100-x8", "mthreads-s4000-x8"])
def test_speeds_on_assumed_efficiencies_are_estimated_ranges(hardware):
    try:
        p = _plan("healthcare", hardware)
    except DoesNotFit:
        p = _plan("edge", hardware)
    tp = p.to_dict()["throughput"]
    assert tp["estimated"] is True and "assumption" in tp["estimated_because"]
    lo, hi = tp["per_user_tok_s_range"]
    assert lo < tp["per_user_tok_s"] < hi


def test_measured_efficiencies_are_not_marked_estimated(cli):
    p = _plan("healthcare", "rtx4090")
    tp = p.to_dict()["throughput"]
    assert tp["estimated"] is False and tp["per_user_tok_s_range"][0] == tp["per_user_tok_s_range"][1]
    r = cli("plan", "--profile", "gov-office", "--hardware", "ascend-910b-x8")
    assert r.code == 0 and "speed (ESTIMATED): ~" in r.stdout and "estimated: the decode efficiency of" in r.stdout


def test_family_names_and_aliases_resolve(cli):
    catalog = load_catalog()
    assert {v.family for v in catalog.resolve("deepseek")} >= {"deepseek-r1", "deepseek-r1-distill-qwen"}
    assert {v.family for v in catalog.resolve("Qwen")} >= {"qwen3"}
    with pytest.raises(UsageError) as info:
        catalog.resolve("deepsek")
    assert "did you mean deepseek" in info.value.hint
    r = cli("plan", "--profile", "gov-office", "--hardware", "h800-x8", "--model", "deepseek", "--json")
    assert r.code == 0, r.stdout + r.stderr
    assert r.json()["data"]["choice"]["family"].startswith("deepseek")


def test_cli_overrides_users_target_and_context(cli):
    r = cli("plan", "--profile", "finance", "--hardware", "rtx4090", "--json")
    assert r.code == 3
    assert any(s.startswith("--users ") for s in r.json()["data"]["suggestions"])
    assert not any(s.startswith("--ctx 4096") for s in r.json()["data"]["suggestions"])  # < document_tokens
    r = cli("plan", "--profile", "finance", "--hardware", "rtx4090", "--users", "2", "--target-tok-s", "9",
            "--ctx", "12288", "--json")
    assert r.code == 0, r.stdout + r.stderr
    engine = r.json()["data"]["engine"]
    assert engine["parallel"] == 2 and engine["n_ctx"] == 2 * 12288
    assert r.json()["data"]["throughput"]["target_per_user_tok_s"] == 9
    short = cli("plan", "--profile", "finance", "--hardware", "rtx4090", "--ctx", "4096", "--json")
    assert short.code == 2 and "document_tokens" in short.json()["errors"][0]["message"]
    bad = cli("plan", "--profile", "gov-office", "--hardware", "cpu-32g", "--users", "0", "--json")
    assert bad.code == 2 and "--users 0" in bad.json()["errors"][0]["message"]


def test_does_not_fit_message_reads_as_a_sentence():
    with pytest.raises(DoesNotFit) as info:
        _plan("gov-office", "cpu-32g")
    assert "which too slow" not in info.value.message and ": too slow: " in info.value.message
