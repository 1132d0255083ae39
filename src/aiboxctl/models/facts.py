"""The architecture facts the memory and throughput models need, from a GGUF header or from
plain numbers (a catalog entry for a model not downloaded yet).

Per-layer quantities are tuples of length ``n_layer``: llama.cpp allows KV head counts, head
dims, feed-forward widths and the SWA flag to vary by layer (Gemma 3/4, hybrids with recurrent
layers that have ``n_head_kv == 0``), and taking element 0 is the classic estimator bug.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from aiboxctl.errors import AiboxError

if TYPE_CHECKING:
    from aiboxctl.models.gguf import GGUFHeader

# llama.cpp's hard-coded SWA periods for GGUFs that carry a window but no pattern key
# (src/llama-model.cpp load_hparams: hparams.set_swa_pattern(n) ⇒ layer il is SWA iff il % n < n-1).
SWA_PERIOD_BY_ARCH: dict[str, int] = {
    "gemma2": 2, "gemma3": 6, "gemma3n": 5, "gemma-embedding": 6, "cohere2": 4, "llama4": 4,
    "gpt-oss": 2, "exaone4": 4, "smallthinker": 4,
}
# Architectures whose recurrent layers hold Mamba-style conv + SSM state.
_MAMBA_ARCHS = {"mamba", "mamba2", "jamba", "falcon-h1", "granitehybrid", "nemotron_h", "plamo2"}
_RWKV_ARCHS = {"rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7"}
_SHORTCONV_ARCHS = {"lfm2", "lfm2moe"}
_PURE_RECURRENT = {"mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7"}

_BLK = re.compile(r"^blk\.(\d+)\.")
_INPUT_PREFIXES = ("token_embd", "position_embd", "token_types", "per_layer_token_embd")
EXPERT_TENSOR = re.compile(r"\.ffn_(gate|up|down|gate_up)_(ch)?exps\.")

# (elements per block, bytes per block) of the ggml weight types the extra buffer type rules
# (sizing.cpu_buffers) and the synthetic catalog matrices below mention.
BLOCK: dict[str, tuple[int, int]] = {
    "F16": (1, 2), "BF16": (1, 2), "F32": (1, 4),
    "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24), "Q8_0": (32, 34),
    "Q2_K": (256, 84), "Q3_K": (256, 110), "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210),
    "IQ4_NL": (32, 18), "IQ4_XS": (256, 136), "MXFP4": (32, 17), "Q1_0": (128, 18),
}


@dataclass(frozen=True)
class WeightMatrix:
    """A weight an extra buffer type could take: where it lives and what op reads it."""

    slot: int  # layer index; n_layer for the output layer
    type_name: str
    shape: tuple[int, ...]  # ggml order: row length first
    n_bytes: int
    op: str  # "mul_mat" (2-D) or "mul_mat_id" (3-D MoE experts)
    duplicate: bool = False  # the tied output: a second tensor besides the input embedding


class FactsError(AiboxError):
    code = "model_facts"


@dataclass(frozen=True)
class ModelFacts:
    """What llama.cpp's memory depends on. Build with :meth:`from_header` or :meth:`from_plain`."""

    architecture: str
    n_layer: int
    n_embd: int
    n_vocab: int
    n_head: tuple[int, ...]
    n_head_kv: tuple[int, ...]  # 0: the layer has no attention KV (recurrent layer)
    head_dim_k: tuple[int, ...]
    head_dim_v: tuple[int, ...]
    n_ff: tuple[int, ...]
    layer_bytes: tuple[int, ...]  # weights of blk.N.* per layer
    input_bytes: int  # token_embd & co: llama.cpp keeps them on the host
    output_bytes: int  # output.weight + output_norm (the output "layer")
    output_matrix_bytes: int  # the vocab projection (a duplicate of token_embd when tied)
    tied_embeddings: bool = False
    n_ctx_train: int = 0
    swa_layers: tuple[bool, ...] = ()  # empty: no SWA
    n_swa: int = 0
    kv_lora_rank: int = 0  # MLA: the cache holds the latent (+ rope) only
    n_rot: int = 0
    n_expert: int = 0
    n_expert_used: int = 0
    n_expert_shared: int = 0
    n_ff_exp: int = 0
    expert_bytes: int = 0  # all ffn_*_exps tensors (MoE)
    recurrent_layers: tuple[bool, ...] = ()
    n_embd_r: int = 0  # recurrent conv/shift state width (f32 elements per sequence)
    n_embd_s: int = 0  # recurrent SSM/WKV state width
    shared_kv_layers: int = 0  # trailing layers that reuse earlier layers' KV
    causal: bool = True
    # The 2-D/3-D weights of types an extra buffer type (AMX, CPU_REPACK) could take, with their
    # shapes: which ones are taken depends on the CPU (sizing.cpu_buffers). Synthesised from the
    # dims and the file type for catalog facts.
    weight_matrices: tuple[WeightMatrix, ...] = ()
    layer_max_tensor_bytes: tuple[int, ...] = ()  # the biggest single tensor of each layer
    name: str = ""
    source: str = "header"  # "header" (exact) or where plain facts came from
    notes: tuple[str, ...] = field(default=())

    # -- derived ------------------------------------------------------------------------
    @property
    def weight_bytes(self) -> int:
        return sum(self.layer_bytes) + self.input_bytes + self.output_bytes

    def is_swa(self, il: int) -> bool:
        return bool(self.swa_layers) and self.swa_layers[il]

    def is_recurrent(self, il: int) -> bool:
        return bool(self.recurrent_layers) and self.recurrent_layers[il]

    def has_kv(self, il: int) -> bool:
        if not self.causal or self.is_recurrent(il) or self.n_head_kv[il] == 0:
            return False
        return il < self.n_layer - self.shared_kv_layers

    def largest_matrix_bytes(self, il: int) -> int:
        """The biggest weight of layer ``il`` (what op offload stages on an accelerator)."""
        if self.layer_max_tensor_bytes:
            return self.layer_max_tensor_bytes[il]
        if self.n_expert and self.expert_bytes:  # all experts of one projection are one tensor
            return self.expert_bytes // (3 * self.n_layer)
        return self.layer_bytes[il] // 3 if self.layer_bytes else 0  # an FFN matrix, rounded up

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def n_head_max(self) -> int:
        return max(self.n_head, default=0)

    # -- constructors -------------------------------------------------------------------
    @classmethod
    def from_plain(
        cls,
        *,
        architecture: str,
        n_layer: int,
        n_embd: int,
        n_vocab: int,
        n_head: int | Sequence[int],
        n_head_kv: int | Sequence[int] | None = None,
        head_dim_k: int | Sequence[int] | None = None,
        head_dim_v: int | Sequence[int] | None = None,
        n_ff: int | Sequence[int] = 0,
        weight_bytes: int,
        input_bytes: int | None = None,
        output_bytes: int | None = None,
        tied_embeddings: bool = False,
        n_ctx_train: int = 0,
        n_swa: int = 0,
        swa_period: int | None = None,
        swa_layers: Sequence[bool] | None = None,
        kv_lora_rank: int = 0,
        n_rot: int = 0,
        n_expert: int = 0,
        n_expert_used: int = 0,
        n_expert_shared: int = 0,
        n_ff_exp: int = 0,
        expert_bytes: int = 0,
        recurrent_layers: Sequence[bool] | None = None,
        n_embd_r: int = 0,
        n_embd_s: int = 0,
        name: str = "",
        source: str = "catalog",
        file_type: str | None = None,
    ) -> ModelFacts:
        """Facts from a catalog entry. ``weight_bytes`` is the total tensor size (file size is a
        good stand-in); without a per-tensor split, the embedding and output matrices are taken
        as ``n_vocab × n_embd`` at the model's average bits per weight and the rest is spread
        evenly over the layers."""
        heads = _per_layer(n_head, n_layer, "n_head")
        heads_kv = _per_layer(heads if n_head_kv is None else n_head_kv, n_layer, "n_head_kv")
        dk = _per_layer(head_dim_k if head_dim_k is not None else n_embd // max(heads[0], 1), n_layer, "head_dim_k")
        dv = _per_layer(head_dim_v if head_dim_v is not None else dk, n_layer, "head_dim_v")
        if input_bytes is None or output_bytes is None:
            # Estimate the embedding's share from the parameter count implied by the layers.
            params_attn = sum(n_embd * (h * k) * 2 + n_embd * (hk * (k + v))
                              for h, hk, k, v in zip(heads, heads_kv, dk, dv))
            ff = _per_layer(n_ff, n_layer, "n_ff")
            params_ffn = sum(3 * n_embd * f for f in ff)
            if n_expert:
                params_ffn += n_layer * 3 * n_embd * n_ff_exp * (n_expert + n_expert_shared)
            params_emb = n_vocab * n_embd
            total_params = params_attn + params_ffn + params_emb * (1 if tied_embeddings else 2)
            bpw = weight_bytes / max(total_params, 1)
            if input_bytes is None:
                input_bytes = int(params_emb * bpw)
            if output_bytes is None:
                output_bytes = 0 if tied_embeddings else int(params_emb * bpw)
        rest = max(weight_bytes - input_bytes - output_bytes, 0)
        per_layer = [rest // n_layer] * n_layer
        per_layer[-1] += rest - sum(per_layer)
        if swa_layers is None and n_swa:
            period = swa_period or SWA_PERIOD_BY_ARCH.get(architecture, 0)
            swa_layers = [_swa_from_period(period, il) for il in range(n_layer)] if period else None
        ff_per_layer = _per_layer(n_ff, n_layer, "n_ff")
        matrices = _synthetic_matrices(file_type, n_embd, n_vocab, heads, heads_kv, dk, dv, ff_per_layer,
                                       n_expert, n_ff_exp, tied_embeddings) if file_type else ()
        return cls(
            architecture=architecture, n_layer=n_layer, n_embd=n_embd, n_vocab=n_vocab, n_head=heads,
            n_head_kv=heads_kv, head_dim_k=dk, head_dim_v=dv, n_ff=ff_per_layer,
            layer_bytes=tuple(per_layer), input_bytes=input_bytes, output_bytes=output_bytes,
            output_matrix_bytes=input_bytes if tied_embeddings else output_bytes,
            tied_embeddings=tied_embeddings, n_ctx_train=n_ctx_train,
            swa_layers=tuple(bool(x) for x in swa_layers) if swa_layers else (), n_swa=n_swa if swa_layers else 0,
            kv_lora_rank=kv_lora_rank, n_rot=n_rot, n_expert=n_expert, n_expert_used=n_expert_used,
            n_expert_shared=n_expert_shared, n_ff_exp=n_ff_exp, expert_bytes=expert_bytes,
            recurrent_layers=tuple(bool(x) for x in recurrent_layers) if recurrent_layers else (),
            n_embd_r=n_embd_r, n_embd_s=n_embd_s, weight_matrices=matrices, name=name, source=source,
        )

    @classmethod
    def from_header(cls, header: GGUFHeader) -> ModelFacts:
        """Exact facts from a parsed header (all shards)."""
        arch = header.architecture
        if not arch:
            raise FactsError(f"{header.source}: no general.architecture in the header")

        def key(suffix: str, default: Any = None) -> Any:
            return header.arch_key(suffix, default)

        n_layer = _as_int(key("block_count"), f"{arch}.block_count", header.source)
        n_embd = _as_int(key("embedding_length"), f"{arch}.embedding_length", header.source)
        heads = _per_layer(_values(key("attention.head_count", 0)), n_layer, "head_count")
        heads_kv_raw = key("attention.head_count_kv")
        heads_kv = heads if heads_kv_raw is None else _per_layer(_values(heads_kv_raw), n_layer, "head_count_kv")
        h0 = max(heads, default=0) or 1
        dk_full = int(key("attention.key_length", n_embd // h0) or 0)
        dv_full = int(key("attention.value_length", n_embd // h0) or 0)
        dk_swa = int(key("attention.key_length_swa", dk_full) or dk_full)
        dv_swa = int(key("attention.value_length_swa", dv_full) or dv_full)

        # Vocabulary: the token list, else the embedding matrix, else vocab_size.
        tokens = header.get("tokenizer.ggml.tokens")
        n_vocab = getattr(tokens, "count", 0) or int(key("vocab_size", 0) or 0)
        emb = header.tensor("token_embd.weight")
        if emb is not None and len(emb.shape) >= 2:
            n_vocab = n_vocab or emb.shape[1]
        if not n_vocab:
            raise FactsError(f"{header.source}: cannot tell the vocabulary size")

        # SWA: explicit pattern key (period or per-layer bools), else llama.cpp's per-arch period.
        n_swa = int(key("attention.sliding_window", 0) or 0)
        pattern = key("attention.sliding_window_pattern")
        swa_layers: tuple[bool, ...] = ()
        if n_swa:
            if pattern is not None and getattr(pattern, "values", None) is not None:
                swa_layers = tuple(bool(v) for v in pattern.values)[:n_layer]
                swa_layers += (False,) * (n_layer - len(swa_layers))
            elif isinstance(pattern, int):
                swa_layers = tuple(_swa_from_period(pattern, il) for il in range(n_layer))
            elif arch in SWA_PERIOD_BY_ARCH:
                period = SWA_PERIOD_BY_ARCH[arch]
                swa_layers = tuple(_swa_from_period(period, il) for il in range(n_layer))
        if not any(swa_layers):
            swa_layers, n_swa = (), 0
        dk = tuple(dk_swa if swa_layers and swa_layers[il] else dk_full for il in range(n_layer))
        dv = tuple(dv_swa if swa_layers and swa_layers[il] else dv_full for il in range(n_layer))

        # Tensor bytes by layer / input / output, and the weights an extra buffer type could take.
        layer_bytes = [0] * n_layer
        layer_max = [0] * n_layer
        matrices: list[WeightMatrix] = []
        input_bytes = output_bytes = expert_bytes = 0
        extra_layers: set[int] = set()
        for t in header.tensors:
            m = _BLK.match(t.name)
            if m:
                il = int(m.group(1))
                if il >= n_layer:  # MTP / nextn layers, not loaded by default
                    extra_layers.add(il)
                    continue
                layer_bytes[il] += t.n_bytes
                layer_max[il] = max(layer_max[il], t.n_bytes)
                expert = bool(EXPERT_TENSOR.search(t.name))
                if expert:
                    expert_bytes += t.n_bytes
                matrices += _matrix(t, il, expert)
            elif t.name.startswith(_INPUT_PREFIXES):
                input_bytes += t.n_bytes
            else:
                output_bytes += t.n_bytes
                matrices += _matrix(t, n_layer, False)
        out = header.tensor("output.weight")
        tied = out is None
        if tied and emb is not None:
            # llama.cpp loads the tied output as token_embd again (TENSOR_DUPLICATED, op MUL_MAT):
            # one tensor while both sit in the same buffer type, two once an extra type takes it.
            matrices += [replace(m, duplicate=True) for m in _matrix(emb, n_layer, False)]
        output_matrix = emb.n_bytes if tied and emb is not None else (out.n_bytes if out is not None else 0)

        # Recurrent layers: explicit zeros in head_count_kv for hybrids; all layers for pure SSM/RWKV.
        recurrent: tuple[bool, ...] = ()
        n_embd_r = n_embd_s = 0
        if arch in _PURE_RECURRENT:
            recurrent = (True,) * n_layer
        elif arch in _MAMBA_ARCHS | _SHORTCONV_ARCHS | _RWKV_ARCHS or any(h == 0 for h in heads_kv):
            recurrent = tuple(h == 0 for h in heads_kv)
        if any(recurrent):
            d_conv = int(key("ssm.conv_kernel", 0) or 0)
            d_inner = int(key("ssm.inner_size", 0) or 0)
            d_state = int(key("ssm.state_size", 0) or 0)
            n_group = int(key("ssm.group_count", 0) or 0)
            if arch in _RWKV_ARCHS:
                n_embd_r = int(key("token_shift_count", 2) or 2) * n_embd
                n_embd_s = n_embd * int(key("wkv.head_size", 0) or 0)
            elif arch in _SHORTCONV_ARCHS:
                n_embd_r = n_embd * (int(key("shortconv.l_cache", 0) or 0) - 1)
            else:
                n_embd_r = (d_conv - 1) * (d_inner + 2 * n_group * d_state) if d_conv else 0
                n_embd_s = d_state * d_inner
        else:
            recurrent = ()

        causal = bool(key("attention.causal", True))
        notes = []
        if extra_layers:
            notes.append(f"{len(extra_layers)} extra (MTP/nextn) layer(s) in the file are not loaded by default")
        return cls(
            architecture=arch, n_layer=n_layer, n_embd=n_embd, n_vocab=n_vocab, n_head=heads,
            n_head_kv=heads_kv, head_dim_k=dk, head_dim_v=dv,
            n_ff=_per_layer(_values(key("feed_forward_length", 0)), n_layer, "feed_forward_length"),
            layer_bytes=tuple(layer_bytes), input_bytes=input_bytes, output_bytes=output_bytes,
            output_matrix_bytes=output_matrix, tied_embeddings=tied,
            n_ctx_train=int(key("context_length", 0) or 0), swa_layers=swa_layers, n_swa=n_swa,
            kv_lora_rank=int(key("attention.kv_lora_rank", 0) or 0),
            n_rot=int(key("rope.dimension_count", dk_full) or 0),
            n_expert=int(key("expert_count", 0) or 0), n_expert_used=int(key("expert_used_count", 0) or 0),
            n_expert_shared=int(key("expert_shared_count", 0) or 0),
            n_ff_exp=int(key("expert_feed_forward_length", 0) or 0), expert_bytes=expert_bytes,
            recurrent_layers=recurrent, n_embd_r=n_embd_r, n_embd_s=n_embd_s,
            shared_kv_layers=int(key("attention.shared_kv_layers", 0) or 0), causal=causal,
            weight_matrices=tuple(matrices), layer_max_tensor_bytes=tuple(layer_max),
            name=str(header.get("general.name", "") or ""), source="header", notes=tuple(notes),
        )


def _matrix(t: Any, slot: int, expert: bool) -> list[WeightMatrix]:
    """The tensor as a candidate for an extra buffer type: 2-D weights are read by MUL_MAT,
    3-D expert stacks by MUL_MAT_ID; norms, biases and F32 tensors never move."""
    op = "mul_mat_id" if expert and len(t.shape) == 3 else "mul_mat" if len(t.shape) == 2 else ""
    if not op or t.type_name in ("F32", "I32") or t.type_name not in BLOCK:
        return []
    return [WeightMatrix(slot, t.type_name, tuple(t.shape), t.n_bytes, op)]


# How llama.cpp's quantizer types a model's matrices, per file type (llama-quant.cpp, simplified):
# (most matrices, half of attn_v/ffn_down in the _M mixes, the output matrix). A 256-block type
# falls back on rows that are not a multiple of 256 (tensor_type_fallback).
_FILE_TYPE_MIX: dict[str, tuple[str, str, str]] = {
    "Q4_0": ("Q4_0", "Q4_0", "Q6_K"), "Q4_1": ("Q4_1", "Q4_1", "Q6_K"), "Q5_0": ("Q5_0", "Q5_0", "Q6_K"),
    "Q5_1": ("Q5_1", "Q5_1", "Q6_K"), "Q8_0": ("Q8_0", "Q8_0", "Q8_0"), "F16": ("F16", "F16", "F16"),
    "BF16": ("BF16", "BF16", "BF16"), "Q2_K": ("Q2_K", "Q3_K", "Q6_K"), "Q3_K_S": ("Q3_K", "Q3_K", "Q6_K"),
    "Q3_K_M": ("Q3_K", "Q4_K", "Q6_K"), "Q3_K_L": ("Q3_K", "Q5_K", "Q6_K"), "Q4_K_S": ("Q4_K", "Q4_K", "Q6_K"),
    "Q4_K_M": ("Q4_K", "Q6_K", "Q6_K"), "Q5_K_S": ("Q5_K", "Q5_K", "Q6_K"), "Q5_K_M": ("Q5_K", "Q6_K", "Q6_K"),
    "Q6_K": ("Q6_K", "Q6_K", "Q6_K"), "IQ4_NL": ("IQ4_NL", "IQ4_NL", "Q6_K"), "IQ4_XS": ("IQ4_XS", "IQ4_XS", "Q6_K"),
    "MXFP4": ("MXFP4", "MXFP4", "Q8_0"),
}
_FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0", "IQ4_XS": "IQ4_NL"}


def _typed(type_name: str, ne0: int, ne1: int, *rest: int, slot: int, op: str = "mul_mat",
           duplicate: bool = False) -> WeightMatrix:
    if BLOCK.get(type_name, (1, 0))[0] == 256 and ne0 % 256:
        type_name = _FALLBACK.get(type_name, type_name)
    block, size = BLOCK[type_name]
    n = ne1
    for r in rest:
        n *= r
    return WeightMatrix(slot, type_name, (ne0, ne1, *rest), ne0 // block * size * n, op, duplicate)


def _synthetic_matrices(file_type: str, n_embd: int, n_vocab: int, heads: Sequence[int], heads_kv: Sequence[int],
                        dk: Sequence[int], dv: Sequence[int], n_ff: Sequence[int], n_expert: int, n_ff_exp: int,
                        tied: bool) -> tuple[WeightMatrix, ...]:
    """A llama-style tensor list for catalog facts (no header): the dims decide which matrices an
    extra buffer type takes (gemma-3-270m's 640-wide rows keep most of it out of AMX)."""
    mix = _FILE_TYPE_MIX.get(file_type.upper())
    if mix is None:
        return ()
    main, more_bits, out = mix
    n_layer = len(heads)
    out_list: list[WeightMatrix] = []
    for il in range(n_layer):
        q, kv_k, kv_v = heads[il] * dk[il], heads_kv[il] * dk[il], heads_kv[il] * dv[il]
        # llama.cpp's use_more_bits: the first and last eighth and every third layer between.
        more = il < n_layer // 8 or il >= 7 * n_layer // 8 or (il - n_layer // 8) % 3 == 2
        side = more_bits if more else main
        if kv_k:
            out_list += [_typed(main, n_embd, q, slot=il), _typed(main, n_embd, kv_k, slot=il),
                         _typed(side, n_embd, kv_v, slot=il), _typed(main, q, n_embd, slot=il)]
        if n_ff[il]:
            out_list += [_typed(main, n_embd, n_ff[il], slot=il), _typed(main, n_embd, n_ff[il], slot=il),
                         _typed(side, n_ff[il], n_embd, slot=il)]
        if n_expert and n_ff_exp:
            out_list += [_typed(main, n_embd, n_ff_exp, n_expert, slot=il, op="mul_mat_id"),
                         _typed(main, n_embd, n_ff_exp, n_expert, slot=il, op="mul_mat_id"),
                         _typed(side, n_ff_exp, n_embd, n_expert, slot=il, op="mul_mat_id")]
    out_list.append(_typed(out, n_embd, n_vocab, slot=n_layer, duplicate=tied))
    return tuple(out_list)


def _swa_from_period(period: int, il: int) -> bool:
    return period == 0 or (il % period) < (period - 1)


def _values(v: Any) -> Any:
    values = getattr(v, "values", None)
    if values is not None:
        return values
    if getattr(v, "count", None) is not None:  # a long array that was skipped
        raise FactsError(f"per-layer array of {v.count} entries is too long")
    return v


def _per_layer(v: Any, n_layer: int, what: str) -> tuple[int, ...]:
    if isinstance(v, (list, tuple)):
        if len(v) != n_layer:
            raise FactsError(f"{what}: {len(v)} per-layer values for {n_layer} layers")
        return tuple(int(x) for x in v)
    return (int(v or 0),) * n_layer


def _as_int(v: Any, what: str, source: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise FactsError(f"{source}: missing or bad {what} ({v!r})")
    return v
