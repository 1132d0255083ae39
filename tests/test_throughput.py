"""The decode/prefill model: bytes read per token over bandwidth, MoE active share, KV at depth,
layer-split devices adding up, and a published llama.cpp benchmark reproduced across depth."""

from __future__ import annotations

import pytest

from aiboxctl.models.catalog import facts_for, load_catalog
from aiboxctl.models.facts import ModelFacts
from aiboxctl.sizing.memory import EngineParams, estimate_memory
from aiboxctl.sizing.throughput import T0_ACCEL, T0_CPU, DeviceSpeed, estimate_throughput

GB = 1e9


def dense(tied: bool = False) -> ModelFacts:
    return ModelFacts.from_plain(architecture="llama", n_layer=32, n_embd=4096, n_vocab=128256, n_head=32,
                                 n_head_kv=8, n_ff=14336, weight_bytes=4_900_000_000, tied_embeddings=tied,
                                 n_ctx_train=131072)


def cpu(bw=100.0, tflops=1000.0, eta=0.5):
    return DeviceSpeed("host", "cpu", bw, tflops, eta)


def test_dense_decode_is_weights_but_token_embd_over_bandwidth():
    f = dense()
    est = estimate_memory(f, EngineParams(n_ctx=8192, parallel=1))
    tp = estimate_throughput(f, est, [cpu()], active_params=8e9, streams=1, depth=0)
    read = sum(f.layer_bytes) + f.output_bytes  # token_embd is a row lookup
    assert tp.weights_read_per_step == read
    assert tp.per_user_tok_s == pytest.approx(1 / (read / (0.5 * 100 * GB) + T0_CPU))
    # KV at depth: 32 layers x 8 KV heads x 128 x (K + V) x 2 bytes = 128 KiB per token.
    deep = estimate_throughput(f, est, [cpu()], active_params=8e9, streams=1, depth=4096)
    assert deep.kv_read_per_token == 32 * 8 * 128 * 2 * 2 * 4096
    assert deep.per_user_tok_s == pytest.approx(1 / ((read + deep.kv_read_per_token) / (50 * GB) + T0_CPU))


def test_tied_embeddings_are_read_as_the_output_matrix():
    f = dense(tied=True)
    est = estimate_memory(f, EngineParams(n_ctx=4096))
    tp = estimate_throughput(f, est, [cpu()], active_params=8e9, streams=1, depth=0)
    assert tp.weights_read_per_step == sum(f.layer_bytes) + f.output_bytes + f.input_bytes


def test_moe_reads_only_the_routed_experts_and_more_with_more_streams():
    cat = load_catalog()
    v = cat.variant("qwen3-30b-a3b")
    f = facts_for(v, v.file_for("Q4_K_M"))
    est = estimate_memory(f, EngineParams(n_ctx=4096, parallel=8))
    one = estimate_throughput(f, est, [cpu()], active_params=v.active * 1e9, streams=1, depth=0)
    eight = estimate_throughput(f, est, [cpu()], active_params=v.active * 1e9, streams=8, depth=0)
    layers = sum(f.layer_bytes)
    non_expert = layers - f.expert_bytes
    assert one.weights_read_per_step == pytest.approx(non_expert + f.expert_bytes * 8 / 128 + f.output_bytes, rel=1e-6)
    assert eight.weights_read_per_step == pytest.approx(
        non_expert + f.expert_bytes * (1 - (1 - 8 / 128) ** 8) + f.output_bytes, rel=1e-6)
    assert one.weights_read_per_step < 0.25 * f.weight_bytes  # ~3B active of 30B
    # 8 streams route to ~40 % of the experts: more aggregate, less per user, far from 8x.
    assert 1.5 * one.aggregate_tok_s < eight.aggregate_tok_s < 4 * one.aggregate_tok_s
    assert eight.per_user_tok_s < one.per_user_tok_s


def test_layer_split_devices_add_their_times_and_compute_caps_big_batches():
    f = dense()
    p = EngineParams(n_ctx=8192, parallel=16, n_gpu_layers=33)
    est = estimate_memory(f, p, accelerators=["CUDA0", "CUDA1"])
    gpus = [DeviceSpeed("host", "cpu", 100, 2), DeviceSpeed("CUDA0", "cuda", 1000, 100, 0.7),
            DeviceSpeed("CUDA1", "cuda", 1000, 100, 0.7)]
    tp = estimate_throughput(f, est, gpus, active_params=8e9, streams=1, depth=0)
    assert set(tp.per_device) == {"CUDA0", "CUDA1"}
    assert tp.per_user_tok_s == pytest.approx(1 / (sum(tp.per_device.values()) + T0_ACCEL))
    slow = [DeviceSpeed("host", "cpu", 100, 2), DeviceSpeed("CUDA0", "cuda", 1000, 1, 0.7),
            DeviceSpeed("CUDA1", "cuda", 1000, 1, 0.7)]
    batch = estimate_throughput(f, est, slow, active_params=8e9, streams=16, depth=0)
    assert batch.bound == "compute"
    assert batch.prefill_tok_s == pytest.approx(1 / (2 * 8e9 / (1e12 * 0.6)), rel=1e-6)


def test_reproduces_the_dgx_spark_depth_curve():
    """llama.cpp benches/dgx-spark.md (memory-model.md §6.4): Qwen2.5-7B Q8_0 on GB10 (273 GB/s)
    decodes 29.30 tok/s at depth 0, 25.93 at 16384 and 22.70 at 32768. Fitting η at depth 0,
    the KV term must predict the deeper points within a few per cent."""
    cat = load_catalog()
    v = cat.variant("qwen2.5-7b-instruct")
    f = facts_for(v, v.file_for("Q8_0"))
    est = estimate_memory(f, EngineParams(n_ctx=32768, n_gpu_layers=99, flash_attn="on"), accelerators=["GPU0"])

    def speed(eta, depth):
        devs = [DeviceSpeed("host", "cpu", 273, 1), DeviceSpeed("GPU0", "cuda", 273, 1000, eta)]
        return estimate_throughput(f, est, devs, active_params=7.6e9, streams=1, depth=depth)

    at_one = speed(1.0, 0)
    eta = (at_one.weights_read_per_step / (273 * GB)) / (1 / 29.30 - T0_ACCEL)
    assert 0.7 < eta < 0.95
    assert speed(eta, 0).per_user_tok_s == pytest.approx(29.30, rel=1e-3)
    assert speed(eta, 16384).kv_read_per_token == 57344 * 16384
    assert speed(eta, 16384).per_user_tok_s == pytest.approx(25.93, rel=0.03)
    assert speed(eta, 32768).per_user_tok_s == pytest.approx(22.70, rel=0.04)
