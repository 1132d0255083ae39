"""The memory and decode-speed models held to the real GPU runs (bench/device_check.py on an
NVIDIA H200, CUDA 13.0, driver 580.159.04, 2026-11-30; docs/gpu.md "First device run" and
"Confirming run": llama.cpp's buffers were byte for byte the same in both).

The figures below are facts of that run: llama.cpp's own buffer sizes from its load log, NVML's
used memory (after − before the server started), and the per-stream decode rates the engine
served. The synthetic models are the Qwen2.5-7B (Q4_K_M) and Qwen2.5-32B (Q4_0) shapes of
bench/synth_models.py, with the exact weight bytes llama.cpp loaded (token_embd on the host).
"""

from __future__ import annotations

import pytest

from aiboxctl.models.facts import ModelFacts
from aiboxctl.sizing.box import known_accelerator_speed
from aiboxctl.sizing.memory import MiB, EngineParams, estimate_memory
from aiboxctl.sizing.throughput import DeviceSpeed, estimate_throughput

# (n_layer, n_embd, n_head, n_head_kv, n_ff, host weights (token_embd), CUDA0 weights)
SHAPES = {
    "7b": (28, 3584, 28, 4, 18944, 306_561_024, 4_370_558_976),
    "32b": (64, 5120, 40, 8, 27648, 437_944_320, 18_196_307_968),
}
# (model, ctx, parallel, KV type): (llama.cpp's CUDA0 compute buffer, NVML used by the server)
MEASURED = {
    ("7b", 8192, 1, "f16"): (318_767_104, 5_715_591_168),
    ("7b", 65536, 16, "f16"): (318_767_104, 9_003_925_504),
    ("7b", 131072, 64, "q8_0"): (432_107_684, 9_354_149_888),
    ("32b", 8192, 1, "f16"): (321_912_832, 21_221_933_056),
    ("32b", 65536, 16, "f16"): (321_912_832, 36_254_318_592),
    ("32b", 131072, 64, "q8_0"): (713_126_052, 37_720_227_840),
}
# llama.cpp's CUDA_Host compute buffer in the same cells (logged with 0.01 MiB resolution): with
# every layer offloaded the host builds the graph's inputs — the f16 KQ mask, the token rows
# (get_rows) and the unused embeddings input beside them
HOST_COMPUTE = {
    ("7b", 8192, 1, "f16"): 23_079_158, ("7b", 65536, 16, "f16"): 81_799_414,
    ("7b", 131072, 64, "q8_0"): 148_992_164, ("32b", 8192, 1, "f16"): 29_370_614,
    ("32b", 65536, 16, "f16"): 88_090_870, ("32b", 131072, 64, "q8_0"): 155_283_620,
}
LOG_HALF_STEP = 0.005 * MiB  # what a logged "22.01 MiB" may hide


def facts(key: str) -> ModelFacts:
    n_layer, n_embd, n_head, n_head_kv, n_ff, host, gpu = SHAPES[key]
    output = 152064 * n_embd // 256 * 210 + 4 * n_embd  # output.weight Q6_K + output_norm
    return ModelFacts.from_plain(architecture="qwen2", n_layer=n_layer, n_embd=n_embd, n_vocab=152064,
                                 n_head=n_head, n_head_kv=n_head_kv, n_ff=n_ff, weight_bytes=host + gpu,
                                 input_bytes=host, output_bytes=output, n_ctx_train=32768, name=key)


def cuda0(key: str, ctx: int, parallel: int, kv: str):
    p = EngineParams(n_ctx=ctx, parallel=parallel, cache_type_k=kv, cache_type_v=kv, flash_attn="on",
                     n_gpu_layers=-1, repack=False)
    return estimate_memory(facts(key), p, accelerators=["CUDA0"])


@pytest.mark.parametrize("cell", sorted(MEASURED), ids=lambda c: f"{c[0]}-{c[1]}x{c[2]}-{c[3]}")
def test_the_estimate_covers_what_the_h200_used_within_3_percent(cell):
    """The goal of issue 18: ≤ 3 % and never under, per buffer and against NVML's used memory — the
    total was 0.4–2.7 % under in every cell (a 384 MiB CUDA context assumed, 531 MiB measured),
    the q8_0 cells' compute buffer 23 % / 52 % under, and the f16 cells' 4.6 % / 6.5 % over (three
    residual-stream tensors beside the logits where ggml-cuda's buffer holds one)."""
    compute, nvml_used = MEASURED[cell]
    est = cuda0(*cell)
    dev = est.device("CUDA0")
    assert abs(dev.weights - SHAPES[cell[0]][6]) < 64  # from_plain spreads the layer bytes evenly
    assert compute <= dev.compute <= 1.03 * compute
    assert nvml_used <= dev.total <= 1.03 * nvml_used
    # the f16 copies are the accelerator's: the host's buffers are what they were
    assert est.host.compute < 170 * MiB


@pytest.mark.parametrize("cell", sorted(HOST_COMPUTE), ids=lambda c: f"{c[0]}-{c[1]}x{c[2]}-{c[3]}")
def test_the_host_compute_buffer_of_a_full_offload_is_covered_within_3_percent(cell):
    """The host's buffer with every layer on the GPU: the mask and two T(n_embd) (the token rows
    and llama-graph.cpp's embeddings input, a leaf that is never freed) — it was estimated with one,
    7–10 MiB (5–36 %; 32–36 % at 8k cells) under."""
    measured = HOST_COMPUTE[cell]
    host = cuda0(*cell).host.compute
    assert measured + LOG_HALF_STEP <= host <= 1.03 * measured


def test_the_f16_kv_copy_is_what_ggml_cuda_asks_for():
    """fattn.cu: f16 copies of a q8_0 K and V, all 131072 (unified) cells of one layer: 7B
    2·(128·4)·131072·2 bytes = 256 MiB, 32B 512 MiB; none with an f16 cache."""
    from aiboxctl.sizing.memory import fa_f16_copy_bytes, resolve_context

    for key, want in (("7b", 256 * MiB), ("32b", 512 * MiB)):
        f = facts(key)
        p = EngineParams(n_ctx=131072, parallel=64, cache_type_k="q8_0", cache_type_v="q8_0", flash_attn="on",
                         n_gpu_layers=-1)
        ctx = resolve_context(f, p)
        assert fa_f16_copy_bytes(f, ctx, p, range(f.n_layer)) == want + 256
        f16 = EngineParams(n_ctx=131072, parallel=64, flash_attn="on", n_gpu_layers=-1)
        assert fa_f16_copy_bytes(f, resolve_context(f, f16), f16, range(f.n_layer)) == 0


# The speed step of that run (aiboxctl serve, 64 slots x 512 cells, full offload, flash attention,
# 128 tokens per stream, prompts of ~10 tokens): each stream's decode rate (tokens after its
# first over the time after it), averaged over the streams.
PER_STREAM = {1: 270.01, 8: 111.85, 32: 89.61, 64: 59.34}
DEPTH = 75  # the prompt plus half the 128 tokens: the mean depth the decode steps read


@pytest.mark.parametrize("streams", sorted(PER_STREAM))
def test_predicted_per_user_decode_matches_the_h200_per_stream_rate(streams):
    """The plan predicted 319/257/154/100 tok/s per user (at depth 4096) and the aggregate +25 % to
    +188 % over what was served: a fixed η of 0.45 and no cost for the streams' matmuls."""
    f = facts("7b")
    est = estimate_memory(f, EngineParams(n_ctx=64 * 512, parallel=64, flash_attn="on", n_gpu_layers=-1,
                                          repack=False), accelerators=["CUDA0"])
    h200 = known_accelerator_speed("CUDA0", "NVIDIA H200")
    assert h200 is not None
    devices = [DeviceSpeed("host", "cpu", 100, 2), h200]
    tp = estimate_throughput(f, est, devices, active_params=7.615616512e9, streams=streams, depth=DEPTH)
    measured = PER_STREAM[streams] * 127 / 128  # 128 tokens counted over 127 intervals
    assert tp.per_user_tok_s == pytest.approx(measured, rel=0.10)
    assert tp.aggregate_tok_s == pytest.approx(streams * tp.per_user_tok_s)


def test_a_probed_gh100_plans_with_the_measured_stream_cost(tmp_path):
    """The measured batched-step cost reaches a plan through the probe: box_from_report gives a
    probed NVIDIA H100 (CUDA) the GH100 rates, and the throughput model then charges its streams
    (without them 64 streams would be predicted as if they cost nothing but KV reads)."""
    import dataclasses

    from aiboxctl.sizing.box import box_from_report
    from test_install_numa import _report, two_socket_cpu

    box = box_from_report(_report(two_socket_cpu(tmp_path), [0]))
    (gpu,) = box.accelerators
    assert gpu.speed.stream_tflops == (20.3, 115.0)
    f = facts("7b")
    est = estimate_memory(f, EngineParams(n_ctx=64 * 512, parallel=64, flash_attn="on", n_gpu_layers=-1,
                                          repack=False), accelerators=["CUDA0"])
    free = dataclasses.replace(gpu.speed, stream_tflops=None)
    with_cost, without = (estimate_throughput(f, est, [box.host_speed, s], active_params=7.615616512e9,
                                              streams=64, depth=DEPTH) for s in (gpu.speed, free))
    assert with_cost.per_user_tok_s < 0.8 * without.per_user_tok_s


def test_a_gh100_hardware_profile_plans_with_the_probe_s_stream_cost():
    """`aiboxctl plan --hardware h800-x8` gave its H800s no per-stream cost (box_from_profile built
    them without it, the probe's box had it), so the profile's plan predicted many streams as if
    they cost nothing but KV reads. Its devices are now what a probe of the same card sees, and the
    plan's per-user speed drops; profiles of other backends, or CUDA cards without a measured run,
    get no stream cost."""
    import dataclasses

    from aiboxctl.sizing.box import box_from_profile
    from aiboxctl.sizing.hardware_profiles import hardware_profile_names, load_hardware_profile
    from aiboxctl.sizing.planner import plan
    from aiboxctl.sizing.profiles import load_use_case

    box = box_from_profile(load_hardware_profile("h800-x8"))
    assert box.accelerators
    for dev in box.accelerators:  # the profile's figures are the probe table's: the same view
        assert dev.speed == known_accelerator_speed(dev.name, dev.model, dev.backend)
        assert dev.speed.stream_tflops == (20.3, 115.0)
    free = dataclasses.replace(box, accelerators=tuple(dataclasses.replace(d, stream_tflops=None)
                                                       for d in box.accelerators))
    use = load_use_case("gov-office")  # 20 users: the streams' cost shows
    now, before = plan(use, box), plan(use, free)
    assert (now.variant, now.quant, now.engine.parallel) == (before.variant, before.quant, before.engine.parallel)
    assert now.throughput.per_user_tok_s < before.throughput.per_user_tok_s
    for name in hardware_profile_names():
        for dev in box_from_profile(load_hardware_profile(name)).accelerators:
            if dev.backend != "cuda" or not any(k in dev.model for k in ("H100", "H200", "H800")):
                assert dev.stream_tflops is None, (name, dev)
