"""llama.cpp's memory, predicted from model facts and engine parameters, per device.

Weights, KV cache (GQA, per-layer heads, SWA cell rule, MLA) and recurrent state follow
llama.cpp's own arithmetic and are exact for a GGUF header; the compute buffer (the peak of
ggml-alloc over the worst-case graph) is a model calibrated against llama.cpp's dry run
(``aiboxctl estimate --exact``, :mod:`aiboxctl.sizing.dryrun`). See
shared/reference/memory-model.md §3 for the sources of every formula.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields

from aiboxctl.engine_settings import FIELD_NAMES, EngineSettings
from aiboxctl.errors import UsageError
from aiboxctl.sizing.cpu_buffers import CpuBuffers
from aiboxctl.models.facts import ModelFacts

MiB = 1024 * 1024
HOST = "host"

# Cache types llama.cpp accepts for K/V: (block size, bytes per block).
CACHE_TYPES: dict[str, tuple[int, int]] = {
    "f32": (1, 4), "f16": (1, 2), "bf16": (1, 2), "q8_0": (32, 34), "q4_0": (32, 18), "q4_1": (32, 20),
    "iq4_nl": (32, 18), "q5_0": (32, 22), "q5_1": (32, 24),
}
# Costs outside llama.cpp's buffers. Host, measured as RSS on llama-cpp-python 0.3.36: the
# serving process (Python, llama_cpp, fastapi/uvicorn) ≈ 70 MiB before a model, and llama.cpp's
# vocabulary and model structures ≈ 160 bytes per token (gemma-3's 262k vocabulary: +41 MiB).
# Accelerator: what the serving process takes on the device beyond llama.cpp's buffers (the CUDA
# context, cuBLAS, ggml-cuda's pools). It grows with the GPU's resident threads (SMs x threads per
# SM: the driver reserves local memory for each), not with the model or the context:
# * this project's device run, 2026-11-30, NVIDIA H200 (132 SMs x 2048 threads), CUDA 13.0,
#   driver 580.159.04, llama-cpp-python 0.3.36: NVML used − llama.cpp's CUDA buffers =
#   530.5–532.6 MiB in all six cells (7B and 32B shapes, 8k–128k cells; docs/gpu.md);
# * llama.cpp PR #23604 (2026-05): a bare CUDA context (cudaMemGetInfo) takes 555 MiB on an RTX PRO
#   6000 Blackwell (188 SMs x 1536) and 107 MiB on an RTX 4060 Ti (34 SMs): ≈ 8 MiB + 1.9 KiB per
#   resident thread, which predicts 520 MiB for the H200's bare context (measured with the rest: 531);
# * memory-model.md §3.8: llama.cpp's "unaccounted" 749 MiB on an RTX PRO 6000 (ggml-org#27953)
#   includes other processes; 0.3–0.8 GiB on CUDA.
# The estimate does not know the GPU's SM count, so it takes the largest per-process figure
# measured on one GPU (the RTX PRO 6000's 555 MiB bare context + the ~11 MiB the H200 run shows
# beyond its bare-context prediction), rounded up: 576 MiB. On the H200 that is ≤ 45 MiB over;
# on small GPUs (a 4060 Ti: 107 MiB) it over-estimates by ~0.45 GiB, never under.
HOST_OVERHEAD = 72 * MiB
HOST_OVERHEAD_PER_TOKEN = 160
ACCEL_OVERHEAD = 576 * MiB
# The graph's small inputs in the host compute buffer when every layer is offloaded (token ids,
# positions, KV indices): 0.01–0.09 MiB measured (2026-11-30 H200 runs, 1–64 slots), with room.
HOST_GRAPH_INPUTS = 256 * 1024


_DEFAULT = EngineSettings()  # the engine's defaults, defined once (aiboxctl.engine_settings)


@dataclass(frozen=True)
class EngineParams:
    """The llama.cpp parameters memory depends on: a view of :class:`EngineSettings` (same names,
    the engine's defaults), plus ``offload_kqv``, which the dry run varies and no setting pins."""

    n_ctx: int = _DEFAULT.n_ctx  # total KV cells over all slots; 0 = the model's training context
    parallel: int = 1  # slots (n_seq_max); an estimate assumes one sequence unless told (serve: 4)
    kv_unified: bool = _DEFAULT.kv_unified  # False: n_ctx is divided across slots
    n_batch: int = _DEFAULT.n_batch
    n_ubatch: int = _DEFAULT.n_ubatch
    cache_type_k: str = _DEFAULT.cache_type_k
    cache_type_v: str = _DEFAULT.cache_type_v
    flash_attn: str = _DEFAULT.flash_attn  # auto | on | off
    swa_full: bool = _DEFAULT.swa_full
    n_gpu_layers: int = _DEFAULT.n_gpu_layers
    tensor_split: tuple[float, ...] = _DEFAULT.tensor_split
    repack: bool = _DEFAULT.repack  # use_extra_bufts: llama.cpp's CPU extra buffer types (AMX, CPU_REPACK)
    mmap: bool = _DEFAULT.mmap
    # embedding | rerank: a pooled engine (engine/embedding.py) — n_batch = n_ubatch = n_ctx, one
    # pooled vector per sequence, and an encoder's graph has no logits
    role: str = _DEFAULT.role
    offload_kqv: bool = True

    @classmethod
    def of(cls, settings: EngineSettings) -> "EngineParams":
        """What memory depends on in ``settings``."""
        return cls(**{name: getattr(settings, name) for name in _SETTING_NAMES})

    def settings(self, **serving) -> EngineSettings:
        """These parameters as engine settings; ``serving`` sets the rest (model name, host, …)."""
        return EngineSettings(**{name: getattr(self, name) for name in _SETTING_NAMES}, **serving)


_SETTING_NAMES = tuple(f.name for f in fields(EngineParams) if f.name in FIELD_NAMES)


@dataclass(frozen=True)
class DeviceMemory:
    device: str  # "host" or an accelerator name ("CUDA0", "GPU0", …)
    weights: int  # the CPU/CPU_Mapped (or accelerator) model buffer, as llama.cpp logs it
    kv_cache: int
    recurrent: int
    compute: int
    output: int
    repack: int  # weights in CPU extra buffer types (AMX, CPU_REPACK); with mmap the originals stay too
    overhead: int
    layers: int = 0  # repeating layers placed here

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.recurrent + self.compute + self.output + self.repack + self.overhead

    def to_dict(self) -> dict:
        return {"device": self.device, "weights": self.weights, "kv_cache": self.kv_cache,
                "recurrent": self.recurrent, "compute": self.compute, "output": self.output,
                "repack": self.repack, "overhead": self.overhead, "total": self.total, "layers": self.layers}


@dataclass(frozen=True)
class ResolvedContext:
    """What llama.cpp makes of the requested context (llama-context.cpp)."""

    n_ctx: int  # total cells after padding
    n_ctx_seq: int  # cells per stream
    n_stream: int
    n_seq: int
    n_batch: int
    n_ubatch: int
    swa_cells: int  # cells per stream of SWA layers (== n_ctx_seq with swa_full)
    flash_attn: bool


@dataclass(frozen=True)
class MemoryEstimate:
    devices: tuple[DeviceMemory, ...]
    context: ResolvedContext
    params: EngineParams
    model: str = ""
    notes: tuple[str, ...] = field(default=())

    @property
    def host(self) -> DeviceMemory:
        return self.devices[0]

    @property
    def total(self) -> int:
        return sum(d.total for d in self.devices)

    def device(self, name: str) -> DeviceMemory:
        for d in self.devices:
            if d.device == name:
                return d
        raise KeyError(name)

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return {"model": self.model, "devices": {d.device: d.to_dict() for d in self.devices},
                "total": self.total, "context": asdict(self.context), "params": asdict(self.params),
                "notes": list(self.notes)}


def _pad(x: int, a: int) -> int:
    return -(-x // a) * a


def cache_row_bytes(cache_type: str, n: int) -> int:
    """ggml_row_size for a KV cache type."""
    try:
        block, size = CACHE_TYPES[cache_type.lower()]
    except KeyError:
        raise UsageError(f"unknown cache type {cache_type!r}; use one of {', '.join(CACHE_TYPES)}") from None
    if n % block:
        raise UsageError(f"cache type {cache_type} needs a row length that is a multiple of {block}, got {n}")
    return n // block * size


def resolve_context(facts: ModelFacts, p: EngineParams) -> ResolvedContext:
    if p.parallel < 1:
        raise UsageError("parallel must be at least 1")
    if p.n_ubatch < 1 or p.n_batch < 1:
        raise UsageError("n_batch and n_ubatch must be positive")
    n_ctx = p.n_ctx or facts.n_ctx_train
    if n_ctx <= 0:
        raise UsageError("no context size: pass n_ctx (the model does not say its training context)")
    n_seq = p.parallel
    n_batch = min(n_ctx, p.n_batch) if facts.causal else p.n_batch
    n_ubatch = min(n_batch, p.n_ubatch)
    pooled = p.role != "chat"
    if pooled:  # what PooledRuntime asks of llama.cpp: every input of a decode in one micro-batch
        n_seq, n_batch, n_ubatch = min(n_seq, 256), n_ctx, n_ctx
    n_ctx = _pad(n_ctx, 256)
    if p.kv_unified or pooled:
        n_ctx_seq, n_stream = n_ctx, 1
    else:
        n_ctx_seq = _pad(n_ctx // n_seq, 256)
        n_ctx, n_stream = n_ctx_seq * n_seq, n_seq
    if p.swa_full or not facts.swa_layers:
        swa_cells = n_ctx_seq
    else:
        swa_cells = min(n_ctx_seq, _pad(facts.n_swa * (n_seq if p.kv_unified else 1) + n_ubatch, 256))
    fa = p.flash_attn.lower()
    if fa not in ("auto", "on", "off"):
        raise UsageError(f"flash_attn must be auto, on or off, not {p.flash_attn!r}")
    flash = fa != "off"  # auto: every backend we plan for (CPU, CUDA, ROCm, Metal, CANN) runs FA
    if not flash and p.cache_type_v.lower() not in ("f16", "f32", "bf16"):
        raise UsageError(f"a quantized V cache ({p.cache_type_v}) needs flash attention",
                         hint="use --flash-attn on, or --cache-type-v f16")
    if facts.is_mla and p.cache_type_k.lower() != p.cache_type_v.lower():
        raise UsageError(f"an MLA model keeps V as a view of K: different K and V cache types "
                         f"({p.cache_type_k}/{p.cache_type_v}) are not supported",
                         hint="use the same type for K and V")
    if not flash and p.cache_type_k.lower() != p.cache_type_v.lower():
        # llama_init_from_model: "model does not support different K and V cache types" without FA
        raise UsageError(f"different K and V cache types ({p.cache_type_k}/{p.cache_type_v}) need flash attention",
                         hint="use --flash-attn on, or the same type for K and V")
    return ResolvedContext(n_ctx, n_ctx_seq, n_stream, n_seq, n_batch, n_ubatch, swa_cells, flash)


def layer_devices(n_layer: int, n_gpu_layers: int, n_devices: int,
                  tensor_split: Sequence[float] = ()) -> list[int]:
    """Device index per layer slot 0..n_layer (the last slot is the output layer); -1 = host.

    llama.cpp (llama-model.cpp load_tensors): i_gpu_start = max(n_layer + 1 - ngl, 0); the output
    layer counts inside n_gpu_layers; splits are cumulative normalised tensor_split fractions.
    """
    ngl = n_layer + 1 if n_gpu_layers < 0 else n_gpu_layers
    if n_devices == 0 or ngl == 0:
        return [-1] * (n_layer + 1)
    split = list(tensor_split) or [1.0] * n_devices
    if len(split) < n_devices:
        split += [0.0] * (n_devices - len(split))
    total = sum(split[:n_devices]) or 1.0
    cum, acc = [], 0.0
    for s in split[:n_devices]:
        acc += s / total
        cum.append(acc)
    i_gpu_start = max(n_layer + 1 - ngl, 0)
    act = min(ngl, n_layer + 1)
    out = []
    for il in range(n_layer + 1):
        if il < i_gpu_start or il - i_gpu_start >= act:
            out.append(-1)
            continue
        frac = (il - i_gpu_start) / act
        dev = next((i for i, c in enumerate(cum) if frac < c), n_devices - 1)  # upper_bound
        out.append(dev)
    return out


def kv_bytes_per_layer(facts: ModelFacts, ctx: ResolvedContext, p: EngineParams) -> list[int]:
    """KV cache bytes of each layer (0 for layers without KV)."""
    out = []
    v_trans = not ctx.flash_attn
    # With v_trans (no FA) llama.cpp sizes V rows by the widest layer (n_embd_v_gqa_max).
    v_max = max((facts.head_dim_v[il] * facts.n_head_kv[il] for il in range(facts.n_layer) if facts.has_kv(il)),
                default=0)
    for il in range(facts.n_layer):
        if not facts.has_kv(il):
            out.append(0)
            continue
        cells = ctx.swa_cells if facts.is_swa(il) else ctx.n_ctx_seq
        k = cache_row_bytes(p.cache_type_k, facts.head_dim_k[il] * facts.n_head_kv[il])
        if facts.is_mla:
            v = 0  # V is a view of the latent K cache (llama.cpp PR #19067)
        else:
            v = cache_row_bytes(p.cache_type_v, v_max if v_trans else facts.head_dim_v[il] * facts.n_head_kv[il])
        out.append((k + v) * cells * ctx.n_stream)
    return out


def recurrent_bytes_per_layer(facts: ModelFacts, ctx: ResolvedContext) -> list[int]:
    rows = max(1, ctx.n_seq)
    return [4 * (facts.n_embd_r + facts.n_embd_s) * rows if facts.is_recurrent(il) else 0
            for il in range(facts.n_layer)]


def output_buffer_bytes(facts: ModelFacts, ctx: ResolvedContext, *, pooled: bool = False) -> int:
    """Logits for one output per sequence, reserved at context creation (host memory); a pooled
    engine reserves one embedding per sequence beside them (measured: all-MiniLM-L6-v2, 64
    sequences, 7.55 MiB = 4·(30522 + 384)·64)."""
    return 4 * (facts.n_vocab + (facts.n_embd if pooled else 0)) * ctx.n_seq


def fa_f16_copy_bytes(facts: ModelFacts, ctx: ResolvedContext, p: EngineParams, layers: Sequence[int]) -> int:
    """The f16 copies of a non-f16 K/V cache that ggml-cuda's flash attention asks of the compute
    buffer, on an accelerator holding ``layers`` (largest layer; the copy is freed after each).

    ggml-cuda (fattn.cu ``ggml_cuda_flash_attn_ext_get_alloc_size``, through the buffer type's
    ``get_alloc_size``) sizes the FLASH_ATTN_EXT node as its output plus f16 copies of K and V
    whenever the kernel it picks reads only f16 (tile or MMA; the vector kernel reads q8_0 & co.
    itself). llama.cpp's worst-case graph has ``n_ubatch / n_stream`` tokens per stream, so the MMA
    kernel unless that is 1 (2 on Ada and newer: not relied on), and every KV cell visible: each copy
    is ``2 · head_dim · n_head_kv · cells · n_stream`` bytes. MLA's V is a view of K and shares its
    copy. HIP and MUSA build the same sources; other backends are assumed alike (never under).
    """
    if not ctx.flash_attn or not p.offload_kqv or not facts.causal or ctx.n_ubatch // ctx.n_stream <= 1:
        return 0
    k_copy = p.cache_type_k.lower() != "f16"
    v_copy = p.cache_type_v.lower() != "f16" and not facts.is_mla
    if not (k_copy or v_copy):
        return 0
    best = 0
    for il in layers:
        if not facts.has_kv(il):
            continue
        cells = (ctx.swa_cells if facts.is_swa(il) else ctx.n_ctx_seq) * ctx.n_stream
        n = (facts.head_dim_k[il] * facts.n_head_kv[il] if k_copy else 0) + \
            (facts.head_dim_v[il] * facts.n_head_kv[il] if v_copy else 0)
        best = max(best, 2 * n * cells + 256)  # each copy starts 128-aligned
    return best


def compute_buffer_bytes(facts: ModelFacts, ctx: ResolvedContext, *, has_output: bool,
                         layers: Sequence[int], fa_copy: int = 0, holds_inputs: bool = True) -> int:
    """Peak of llama.cpp's worst-case graph on one backend.

    llama.cpp reserves a prompt graph of ``n_ubatch`` tokens, all of them outputs, with every KV
    cell visible; ggml-alloc reuses memory between layers, so the buffer is the largest of a
    few phases, each a sum of f32 activations ``T(width) = 4·n_ubatch·width``:

    * output: the logits ``T(n_vocab)`` plus the final norm ``T(n_embd)`` (``result_norm``, a
      graph output, never freed) on the device holding the output layer; on the host
      (``holds_inputs``) also the embeddings input ``inp_embd`` (llama-graph.cpp build_inp_embd:
      an input leaf that ggml_build_forward_select leaves without consumers, so ggml-alloc never
      frees it) and one ``T(n_embd)`` of placement noise, ``3·T(n_embd)`` in all (CPU dry run of
      the Qwen2.5-7B/32B shapes: T(n_vocab) + 2·T(n_embd) exactly, estimate +2.3 %/+3.2 %). An
      accelerator gets its inputs as split copies that are freed before the output layer: the
      2026-11-30 H200 runs logged ``T(n_vocab) + T(n_embd)`` to the byte (304 and 307 MiB) where
      three had been estimated (+4.6 %/+6.5 %). MLA adds its latent query and output;
    * attention: the KQ masks (f16 with flash attention, f32 without) for the full and the SWA
      cache, ``3·T(n_embd) + 2·T(q) + 2·T(kv)``, and without flash attention the f32 score
      matrix ``4·n_kv·n_ubatch·n_head`` (MLA keeps two more latent-query tensors);
    * feed-forward: gate, up and their product ``3·T(n_ff)`` (MoE: per used expert).

    * with ``fa_copy`` (:func:`fa_f16_copy_bytes`: a quantized KV cache on ggml-cuda), the
      attention phase plus the attention node's f16 K/V copies (the 2026-11-30 H200 run,
      Qwen2.5-7B/32B shapes, 131072 unified cells, q8_0: 412.09 and 680.09 MiB measured = the
      256/512 MiB copies + the 128 MiB f16 mask + the layer's activations; 421 and 694 MiB
      estimated; docs/gpu.md).

    Known misses (ggml-alloc fragmentation, not modelled): on an SWA model whose last layers are
    SWA, without flash attention at very long contexts the logits land above leftovers of the
    attention phase (synthetic gemma3, 32k cells: 7 % low); MLA without flash attention is
    over-estimated by up to 8 %, and with fewer KV cells per stream than the ubatch its
    latent tensors are freed before the logits (up to 16 % over). Otherwise the allocator's
    placement noise is about one ``T(n_embd)``.

    The coefficients were fitted against llama.cpp's dry run on llama, qwen2, qwen3, gemma3,
    deepseek2, mamba and two real models (bench/sizing_accuracy.py prints the residuals).
    """
    if not layers and not has_output:
        return 0
    n_ub = ctx.n_ubatch

    def T(width: int) -> int:
        return 4 * n_ub * width

    E = facts.n_embd
    phases = []
    moe = facts.n_expert and facts.n_expert_used and facts.n_ff_exp
    moe_act = T(facts.n_ff_exp * facts.n_expert_used) if moe else 0
    encoder = not facts.causal  # BERT/XLM-R: attention over the batch's own tokens, no KV cache
    if has_output and not encoder:  # a pooled encoder has no output layer: no logits
        out = T(facts.n_vocab) + (3 if holds_inputs else 1) * T(E)
        if facts.is_mla:
            # MLA's latent query and latent attention output of the last layer stay below the
            # logits (DeepSeek-V2-Lite shapes: +34 MiB at ubatch 512, matching 240–242 MiB).
            h = facts.n_head[-1]
            out += T(h * facts.head_dim_k[-1]) + T(h * facts.kv_lora_rank)
        phases.append(out)
    att = [il for il in layers if facts.has_kv(il) or (encoder and facts.n_head[il])]
    mask_bytes = 2 if ctx.flash_attn else 4
    masks = 0
    n_keys = n_ub if encoder else ctx.n_ctx_seq  # an encoder attends within its ubatch
    if any(not facts.is_swa(il) for il in att):
        masks += mask_bytes * n_keys * n_ub
    if any(facts.is_swa(il) for il in att):
        masks += mask_bytes * ctx.swa_cells * n_ub
    att_phases = []
    for il in att:
        n_kv = ctx.swa_cells if facts.is_swa(il) else n_keys
        h = facts.n_head[il]
        if facts.is_mla:
            q = h * facts.head_dim_k[il]  # latent + rope per head after absorption
            kv = facts.head_dim_k[il]
            extra = 2 * T(q)
        else:
            q = h * facts.head_dim_k[il]
            kv = facts.n_head_kv[il] * (facts.head_dim_k[il] + facts.head_dim_v[il]) // 2
            extra = 0
        peak = masks + 3 * T(E) + 2 * T(q) + 2 * T(kv) + extra
        if not ctx.flash_attn:
            peak += 4 * n_kv * n_ub * h
        att_phases.append(peak)
    phases += att_phases
    if fa_copy and att_phases:
        phases.append(fa_copy + max(att_phases))
    ff = max((facts.n_ff[il] for il in layers), default=0)
    if ff:
        # BERT's feed-forward is ungated (up, then GELU in place): one T(n_ff), not three
        # (all-MiniLM-L6-v2 at ubatch 4096: the attention phase, 75 MiB, is the peak)
        phases.append(masks + 2 * T(E) + (T(ff) if facts.architecture == "bert" else 3 * T(ff)))
    if moe and layers:
        phases.append(masks + 2 * T(E) + 3 * moe_act + 2 * T(facts.n_expert))
    if any(facts.is_recurrent(il) for il in layers):
        phases.append(3 * T(E))  # the scan's inputs stay below the logits in every case measured
    return max(phases, default=0)


def _mask_bytes(facts: ModelFacts, ctx: ResolvedContext) -> int:
    """The KQ masks (f16 with flash attention, f32 without) of the full and the SWA cache."""
    per = (2 if ctx.flash_attn else 4) * ctx.n_ubatch
    att = [il for il in range(facts.n_layer) if facts.has_kv(il)]
    total = 0
    if any(not facts.is_swa(il) for il in att):
        total += per * ctx.n_ctx_seq
    if any(facts.is_swa(il) for il in att):
        total += per * ctx.swa_cells
    return total


def extra_buffer_bytes(facts: ModelFacts, cpu: CpuBuffers, host_slots: set[int], mmap: bool) -> tuple[int, int]:
    """(bytes the CPU extra buffer types allocate, bytes that leave the CPU buffer for them).

    With mmap the CPU_Mapped buffer spans the file, and the originals of the moved weights were
    read through the mapping to be converted: they stay resident next to the copies. Without
    mmap a moved weight lives only in its extra buffer — except the tied output matrix, which
    is a second tensor beside the input embedding (measured on gemma-3-270m with AMX: CPU
    211.79 + AMX 213.91 MiB without mmap, CPU_Mapped 235.16 + AMX 213.91 MiB with it).
    """
    extra = moved = 0
    for w in facts.weight_matrices:
        if w.slot not in host_slots:
            continue
        placed = cpu.buffer_for(w)
        if placed is None:
            continue
        extra += placed[1]
        if not mmap and not w.duplicate:
            moved += w.n_bytes
    return extra, moved


def estimate_memory(facts: ModelFacts, params: EngineParams, *, accelerators: Sequence[str] = (),
                    cpu: CpuBuffers | None = None) -> MemoryEstimate:
    """Memory per device (host first, then each accelerator) for one configuration.

    ``cpu``: the extra buffer types of the CPU that will run it (``CpuBuffers.from_flags`` with a
    probe's or hardware profile's flags; :func:`aiboxctl.sizing.cpu_buffers.this_cpu`). Without
    it the estimate assumes an AVX2 x86 CPU (CPU_REPACK, no AMX) and says so in its notes.
    """
    assumed_cpu = cpu is None
    if cpu is None:
        cpu = CpuBuffers.from_flags(("avx2",), "x86_64")
    ctx = resolve_context(facts, params)
    gpus = list(accelerators)
    if params.n_gpu_layers != 0 and not gpus:
        gpus = ["GPU0"]
    placement = layer_devices(facts.n_layer, params.n_gpu_layers, len(gpus), params.tensor_split)
    n_dev = 1 + len(gpus)
    weights = [0] * n_dev
    kv = [0] * n_dev
    rec = [0] * n_dev
    repack = [0] * n_dev
    layer_count = [0] * n_dev
    layers_on: list[list[int]] = [[] for _ in range(n_dev)]
    kv_layer = kv_bytes_per_layer(facts, ctx, params)
    rs_layer = recurrent_bytes_per_layer(facts, ctx)
    for il in range(facts.n_layer):
        d = placement[il] + 1
        weights[d] += facts.layer_bytes[il]
        layer_count[d] += 1
        layers_on[d].append(il)
        kd = d if params.offload_kqv else 0
        kv[kd] += kv_layer[il]
        rec[kd] += rs_layer[il]
    out_dev = placement[facts.n_layer] + 1
    weights[0] += facts.input_bytes
    weights[out_dev] += facts.output_bytes
    if facts.tied_embeddings and out_dev != 0:
        weights[out_dev] += facts.output_matrix_bytes  # TENSOR_DUPLICATED copy of token_embd
    if params.repack:
        host_slots = set(layers_on[0]) | ({facts.n_layer} if out_dev == 0 else set())
        repack[0], moved = extra_buffer_bytes(facts, cpu, host_slots, params.mmap)
        weights[0] -= moved
    compute = [0] * n_dev
    for d in range(n_dev):
        compute[d] = compute_buffer_bytes(facts, ctx, has_output=(d == out_dev), layers=layers_on[d],
                                          fa_copy=fa_f16_copy_bytes(facts, ctx, params, layers_on[d]) if d else 0,
                                          holds_inputs=d == 0)  # ggml-backend puts graph inputs on the CPU
    if not compute[0]:
        # Everything offloaded: the host still builds the graph's inputs — the KQ masks, the token
        # rows (get_rows of token_embd), the embeddings input beside them that llama-graph.cpp
        # (build_inp_embd, since ggml-org PR #18550) adds and ggml-alloc never frees, and a few
        # small ones (token ids, positions, KV indices). The 2026-11-30 H200 runs logged the mask
        # + 2·T(n_embd) + 0.01 MiB (1 and 16 slots) or + 0.09 MiB (64 slots, q8_0) in all six
        # cells, where the mask + one T(n_embd) had been estimated (an older llama-server log,
        # 12.01 → 72.01 MiB from 2k to 32k cells, memory-model.md §3.6, predates that input).
        compute[0] = _mask_bytes(facts, ctx) + 2 * 4 * ctx.n_ubatch * facts.n_embd + HOST_GRAPH_INPUTS
    if n_dev > 1 and layers_on[0] and any(layers_on[1:]) and ctx.n_ubatch >= 32:
        # Partial offload: for batches of 32+ tokens llama.cpp's op offload runs host layers'
        # matmuls on the first accelerator, staging the weight in its compute buffer.
        first = next(d for d in range(1, n_dev) if layers_on[d] or d == out_dev)
        compute[first] += max((facts.largest_matrix_bytes(il) for il in layers_on[0]), default=0)
    output = [0] * n_dev
    output[0] = output_buffer_bytes(facts, ctx, pooled=params.role != "chat")
    names = [HOST, *gpus]
    host_overhead = HOST_OVERHEAD + HOST_OVERHEAD_PER_TOKEN * facts.n_vocab
    devices = tuple(
        DeviceMemory(names[d], weights[d], kv[d], rec[d], compute[d], output[d], repack[d],
                     host_overhead if d == 0 else ACCEL_OVERHEAD, layer_count[d])
        for d in range(n_dev)
    )
    notes = list(facts.notes)
    if params.repack and assumed_cpu:
        notes.append("CPU not given: extra buffer types assumed those of an AVX2 CPU (CPU_REPACK, no AMX)")
    if params.repack and repack[0]:
        notes.append(f"llama.cpp's CPU extra buffer types ({cpu.describe()}) hold {repack[0] / MiB:,.1f} MiB of weights"
                     + (" beside the mapped originals" if params.mmap else ""))
    elif params.repack and not facts.weight_matrices and cpu.names:
        notes.append("the weights' types are unknown: the extra buffer copy (AMX/CPU_REPACK) is not counted")
    if facts.source != "header":
        notes.append(f"model facts from {facts.source}: weights are approximate until the header is read")
    return MemoryEstimate(devices, ctx, params, facts.name, tuple(notes))
