"""Synthetic GGUF models, written with gguf-py, that llama.cpp really loads.

One writer per architecture family the sizing tests cover: llama, qwen2, qwen3, qwen3moe (MoE),
gemma3 (SWA), deepseek2 (MLA + MoE), lfm2 (hybrid: short-convolution + attention layers) and mamba
(recurrent), with the shapes of real models (Llama-3.2-1B, Qwen2.5-0.5B, Qwen3-0.6B, a shortened
Qwen3-30B-A3B, Gemma-3-1B, a shortened DeepSeek-V2-Lite, LFM2-350M, Mamba-130M) so that the
compute-buffer terms that matter in practice (vocabulary, heads, context) dominate as they do in
real models. Only the header is written; the tensor data region is a sparse hole of zeros
(``truncate``), so a "1B" file costs a few MB of disk and sizing never looks at weights anyway.
``write_model(path, arch, ...)`` returns the path; ``split_max_tensors`` writes a split model
and returns its first shard (``-00001-of-0000N.gguf``). ``tokenizer`` puts a real tokenizer's
keys (``r1tiny.read_tokenizer``) in place of the placeholder vocabulary, ``tensor_type`` picks each
matrix's type (a quantisation mix such as Q4_K_M), and ``fill`` writes the data region instead of
leaving the hole (``bench/synth_models.py``: random quantised blocks, for speed runs).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, Callable


@dataclass(frozen=True)
class Spec:
    arch: str
    n_layer: int = 4
    n_embd: int = 256
    n_head: int = 8
    n_head_kv: int | tuple[int, ...] = 2
    head_dim: int = 32
    n_ff: int = 512
    n_vocab: int = 4096
    n_ctx_train: int = 32768
    tied: bool = False
    weight_type: str = "F16"
    # SWA (gemma3)
    n_swa: int = 0
    swa_period: int | None = None
    # MLA / MoE (deepseek2)
    kv_lora_rank: int = 0
    q_lora_rank: int = 0
    qk_rope: int = 0
    qk_nope: int = 0
    v_head: int = 0
    n_expert: int = 0
    n_expert_used: int = 0
    n_expert_shared: int = 0
    n_ff_exp: int = 0
    leading_dense: int = 0
    # Mamba
    d_conv: int = 4
    d_state: int = 16
    d_inner: int = 0
    dt_rank: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def with_(self, **kw: Any) -> Spec:
        return replace(self, **kw)


SPECS: dict[str, Spec] = {
    # Llama-3.2-1B shapes, Q4_0 matrices (a CPU repack type)
    "llama": Spec("llama", n_layer=16, n_embd=2048, n_head=32, n_head_kv=8, head_dim=64, n_ff=8192,
                  n_vocab=128256, n_ctx_train=131072, tied=True, weight_type="Q4_0"),
    # Qwen2.5-0.5B
    "qwen2": Spec("qwen2", n_layer=24, n_embd=896, n_head=14, n_head_kv=2, head_dim=64, n_ff=4864,
                  n_vocab=151936, tied=True, weight_type="Q8_0"),
    # Qwen3-0.6B
    "qwen3": Spec("qwen3", n_layer=28, n_embd=1024, n_head=16, n_head_kv=8, head_dim=128, n_ff=3072,
                  n_vocab=151936, n_ctx_train=40960, tied=True, weight_type="Q4_K"),
    # Gemma-3-1B: SWA window 512, every 6th layer global
    "gemma3": Spec("gemma3", n_layer=26, n_embd=1152, n_head=4, n_head_kv=1, head_dim=256, n_ff=6912,
                   n_vocab=262144, tied=True, n_swa=512, weight_type="Q8_0"),
    # DeepSeek-V2-Lite shapes (MLA + 64 experts, 6 used, 2 shared), 6 layers
    "deepseek2": Spec("deepseek2", n_layer=6, n_embd=2048, n_head=16, n_head_kv=1, n_ff=10944, n_vocab=102400,
                      n_ctx_train=163840, kv_lora_rank=512, q_lora_rank=0, qk_rope=64, qk_nope=128, v_head=128,
                      n_expert=64, n_expert_used=6, n_expert_shared=2, n_ff_exp=1408, leading_dense=1,
                      weight_type="Q8_0"),
    # Qwen3-30B-A3B shapes (128 experts, 8 used, no shared expert), 4 layers
    "qwen3moe": Spec("qwen3moe", n_layer=4, n_embd=2048, n_head=32, n_head_kv=4, head_dim=128, n_ff=6144,
                     n_vocab=151936, n_ctx_train=40960, weight_type="Q8_0", n_expert=128, n_expert_used=8,
                     n_ff_exp=768),
    # LFM2-350M shapes: a hybrid of short-convolution (recurrent state) and attention layers
    "lfm2": Spec("lfm2", n_layer=16, n_embd=1024, n_head=16,
                 n_head_kv=(0, 0, 8, 0, 0, 8, 0, 0, 8, 0, 8, 0, 8, 0, 8, 0), head_dim=64, n_ff=4608,
                 n_vocab=65536, n_ctx_train=128000, tied=True, weight_type="Q8_0", d_conv=3),
    # Mamba-130M (recurrent state instead of a KV cache)
    "mamba": Spec("mamba", n_layer=24, n_embd=768, n_head=0, n_head_kv=0, n_vocab=50280, d_inner=1536,
                  dt_rank=48, n_ctx_train=1_048_576, tied=True),
}


def _tokens(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tokens += [f"tok{i}" for i in range(n_vocab - len(tokens))]
    types = [2, 3, 3] + [6] * 256 + [1] * (n_vocab - 259)
    return tokens, [0.0] * n_vocab, types


def write_model(path: str | Path, spec: Spec | str, *, split_max_tensors: int = 0, chat_template: str | None = None,
                tokenizer: dict[str, Any] | None = None, tensor_type: Callable[[str, Any], Any] | None = None,
                fill: Callable[[BinaryIO, str, Any], None] | None = None, **overrides: Any) -> Path:
    import numpy as np
    from gguf import GGML_QUANT_SIZES, ExpertGatingFuncType, GGMLQuantizationType, GGUFWriter

    if isinstance(spec, str):
        spec = SPECS[spec]
    if tokenizer is not None:
        overrides["n_vocab"] = len(tokenizer["tokenizer.ggml.tokens"])
    if overrides:
        spec = spec.with_(**overrides)
    s = spec
    path = Path(path)
    w = GGUFWriter(path, s.arch, split_max_tensors=split_max_tensors)
    a = s.arch
    w.add_name(f"synthetic {a}")
    w.add_context_length(s.n_ctx_train)
    w.add_embedding_length(s.n_embd)
    w.add_block_count(s.n_layer)
    w.add_file_type(1)
    wtype = getattr(GGMLQuantizationType, s.weight_type)

    def info(name: str, ne: tuple[int, ...], qtype: Any) -> None:
        if tensor_type is not None and len(ne) > 1 and qtype != GGMLQuantizationType.F32:
            qtype = tensor_type(name, qtype)
        block, type_size = GGML_QUANT_SIZES[qtype]
        if ne[0] % block:
            qtype, (block, type_size) = GGMLQuantizationType.F16, GGML_QUANT_SIZES[GGMLQuantizationType.F16]
        row = ne[0] // block * type_size
        byte_shape = (*reversed(ne[1:]), row)  # numpy order, last axis in bytes
        n_bytes = row
        for d in ne[1:]:
            n_bytes *= d
        w.add_tensor_info(name, byte_shape, np.dtype(np.uint8), n_bytes, raw_dtype=qtype)

    def mat(name: str, *ne: int) -> None:
        info(name, ne, wtype)

    def vec(name: str, n: int) -> None:
        info(name, (n,), GGMLQuantizationType.F32)

    def f32(name: str, *ne: int) -> None:
        info(name, ne, GGMLQuantizationType.F32)

    if a == "mamba":
        w.add_ssm_conv_kernel(s.d_conv)
        w.add_ssm_inner_size(s.d_inner)
        w.add_ssm_state_size(s.d_state)
        w.add_ssm_time_step_rank(s.dt_rank)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_feed_forward_length(0)
        w.add_head_count(0)
        w.add_head_count_kv(0)
    else:
        w.add_feed_forward_length(s.n_ff)
        w.add_head_count(s.n_head)
        w.add_head_count_kv(list(s.n_head_kv) if isinstance(s.n_head_kv, tuple) else s.n_head_kv)
        w.add_layer_norm_rms_eps(1e-6)
        w.add_rope_freq_base(10000.0)
    if a == "lfm2":
        w.add_shortconv_l_cache(s.d_conv)
    if a == "qwen3moe":
        w.add_expert_count(s.n_expert)
        w.add_expert_used_count(s.n_expert_used)
        w.add_expert_feed_forward_length(s.n_ff_exp)
    if a in ("qwen3", "qwen3moe", "gemma3"):
        w.add_key_length(s.head_dim)
        w.add_value_length(s.head_dim)
    if a == "gemma3":
        w.add_sliding_window(s.n_swa)
        if s.swa_period:
            w.add_sliding_window_pattern(s.swa_period)
    if a == "deepseek2":
        w.add_leading_dense_block_count(s.leading_dense)
        w.add_expert_count(s.n_expert)
        w.add_expert_used_count(s.n_expert_used)
        w.add_expert_shared_count(s.n_expert_shared)
        w.add_expert_feed_forward_length(s.n_ff_exp)
        w.add_expert_weights_scale(1.0)
        w.add_expert_weights_norm(True)
        w.add_expert_gating_func(ExpertGatingFuncType.SIGMOID)
        w.add_q_lora_rank(s.q_lora_rank)
        w.add_kv_lora_rank(s.kv_lora_rank)
        w.add_key_length(s.kv_lora_rank + s.qk_rope)
        w.add_value_length(s.kv_lora_rank)
        w.add_key_length_mla(s.qk_nope + s.qk_rope)
        w.add_value_length_mla(s.v_head)
        w.add_rope_dimension_count(s.qk_rope)
    for k, v in s.extra.items():
        w.add_key_value(k, *v) if isinstance(v, tuple) else w.add_uint32(k, v)

    if tokenizer is not None:
        add_tokenizer(w, tokenizer)
    else:
        tokens, scores, types = _tokens(s.n_vocab)
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
    if chat_template:
        w.add_chat_template(chat_template)

    E, V = s.n_embd, s.n_vocab
    info("token_embd.weight", (E, V), GGMLQuantizationType.Q8_0 if s.weight_type != "F16" else wtype)
    vec("token_embd_norm.weight" if a == "lfm2" else "output_norm.weight", E)
    if not s.tied:
        mat("output.weight", E, V)
    for il in range(s.n_layer):
        b = f"blk.{il}."
        if a == "mamba":
            vec(b + "attn_norm.weight", E)
            mat(b + "ssm_in.weight", E, 2 * s.d_inner)
            f32(b + "ssm_conv1d.weight", s.d_conv, s.d_inner)
            vec(b + "ssm_conv1d.bias", s.d_inner)
            mat(b + "ssm_x.weight", s.d_inner, s.dt_rank + 2 * s.d_state)
            mat(b + "ssm_dt.weight", s.dt_rank, s.d_inner)
            vec(b + "ssm_dt.bias", s.d_inner)
            f32(b + "ssm_a", s.d_state, s.d_inner)
            vec(b + "ssm_d", s.d_inner)
            mat(b + "ssm_out.weight", s.d_inner, E)
            continue
        hkv = s.n_head_kv[il] if isinstance(s.n_head_kv, tuple) else s.n_head_kv
        vec(b + "attn_norm.weight", E)
        if a == "lfm2":
            if hkv == 0:
                f32(b + "shortconv.conv.weight", s.d_conv, E)
                mat(b + "shortconv.in_proj.weight", E, 3 * E)
                mat(b + "shortconv.out_proj.weight", E, E)
            else:
                mat(b + "attn_q.weight", E, s.n_head * s.head_dim)
                mat(b + "attn_k.weight", E, hkv * s.head_dim)
                mat(b + "attn_v.weight", E, hkv * s.head_dim)
                mat(b + "attn_output.weight", s.n_head * s.head_dim, E)
                vec(b + "attn_q_norm.weight", s.head_dim)
                vec(b + "attn_k_norm.weight", s.head_dim)
            vec(b + "ffn_norm.weight", E)
            mat(b + "ffn_gate.weight", E, s.n_ff)
            mat(b + "ffn_up.weight", E, s.n_ff)
            mat(b + "ffn_down.weight", s.n_ff, E)
            continue
        if a == "deepseek2":
            qk_head = s.qk_nope + s.qk_rope
            mat(b + "attn_q.weight", E, s.n_head * qk_head)
            mat(b + "attn_kv_a_mqa.weight", E, s.kv_lora_rank + s.qk_rope)
            vec(b + "attn_kv_a_norm.weight", s.kv_lora_rank)
            mat(b + "attn_k_b.weight", s.qk_nope, s.kv_lora_rank, s.n_head)
            mat(b + "attn_v_b.weight", s.kv_lora_rank, s.v_head, s.n_head)
            mat(b + "attn_output.weight", s.n_head * s.v_head, E)
            vec(b + "ffn_norm.weight", E)
            if il < s.leading_dense:
                mat(b + "ffn_gate.weight", E, s.n_ff)
                mat(b + "ffn_up.weight", E, s.n_ff)
                mat(b + "ffn_down.weight", s.n_ff, E)
            else:
                f32(b + "ffn_gate_inp.weight", E, s.n_expert)
                vec(b + "exp_probs_b.bias", s.n_expert)
                mat(b + "ffn_gate_exps.weight", E, s.n_ff_exp, s.n_expert)
                mat(b + "ffn_up_exps.weight", E, s.n_ff_exp, s.n_expert)
                mat(b + "ffn_down_exps.weight", s.n_ff_exp, E, s.n_expert)
                mat(b + "ffn_gate_shexp.weight", E, s.n_ff_exp * s.n_expert_shared)
                mat(b + "ffn_up_shexp.weight", E, s.n_ff_exp * s.n_expert_shared)
                mat(b + "ffn_down_shexp.weight", s.n_ff_exp * s.n_expert_shared, E)
            continue
        mat(b + "attn_q.weight", E, s.n_head * s.head_dim)
        mat(b + "attn_k.weight", E, hkv * s.head_dim)
        mat(b + "attn_v.weight", E, hkv * s.head_dim)
        mat(b + "attn_output.weight", s.n_head * s.head_dim, E)
        if a == "qwen2":
            vec(b + "attn_q.bias", s.n_head * s.head_dim)
            vec(b + "attn_k.bias", hkv * s.head_dim)
            vec(b + "attn_v.bias", hkv * s.head_dim)
        if a in ("qwen3", "qwen3moe", "gemma3"):
            vec(b + "attn_q_norm.weight", s.head_dim)
            vec(b + "attn_k_norm.weight", s.head_dim)
        if a == "gemma3":
            vec(b + "post_attention_norm.weight", E)
            vec(b + "post_ffw_norm.weight", E)
        vec(b + "ffn_norm.weight", E)
        if a == "qwen3moe":
            f32(b + "ffn_gate_inp.weight", E, s.n_expert)
            mat(b + "ffn_gate_exps.weight", E, s.n_ff_exp, s.n_expert)
            mat(b + "ffn_up_exps.weight", E, s.n_ff_exp, s.n_expert)
            mat(b + "ffn_down_exps.weight", s.n_ff_exp, E, s.n_expert)
            continue
        mat(b + "ffn_gate.weight", E, s.n_ff)
        mat(b + "ffn_up.weight", E, s.n_ff)
        mat(b + "ffn_down.weight", s.n_ff, E)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    assert w.fout is not None
    for fout, tensors in zip(w.fout, w.tensors):
        # The data region: aligned start, each tensor padded to the alignment; left as a hole.
        size = GGUFWriter.ggml_pad(fout.tell(), w.data_alignment)
        if fill is not None:
            fout.write(bytes(size - fout.tell()))
        for name, ti in tensors.items():
            padded = GGUFWriter.ggml_pad(ti.nbytes, w.data_alignment)
            if fill is not None:
                fill(fout, name, ti)  # writes exactly ti.nbytes
                fout.write(bytes(padded - ti.nbytes))
            size += padded
        fout.truncate(size)
    w.close()
    if split_max_tensors:
        return path.with_name(path.name[: -len(".gguf")] + f"-00001-of-{_count_shards(path):05d}.gguf")
    return path


def add_tokenizer(w: Any, tok: dict[str, Any]) -> None:
    """A real tokenizer's keys (``r1tiny.read_tokenizer``'s dict), chat template included."""
    w.add_tokenizer_model(tok["tokenizer.ggml.model"])
    if "tokenizer.ggml.pre" in tok:
        w.add_tokenizer_pre(tok["tokenizer.ggml.pre"])
    w.add_token_list(tok["tokenizer.ggml.tokens"])
    w.add_token_types(tok["tokenizer.ggml.token_type"])
    if "tokenizer.ggml.merges" in tok:
        w.add_token_merges(tok["tokenizer.ggml.merges"])
    for key, add in (("bos_token_id", w.add_bos_token_id), ("eos_token_id", w.add_eos_token_id),
                     ("padding_token_id", w.add_pad_token_id)):
        if f"tokenizer.ggml.{key}" in tok:
            add(tok[f"tokenizer.ggml.{key}"])
    for key, add in (("add_bos_token", w.add_add_bos_token), ("add_eos_token", w.add_add_eos_token)):
        if f"tokenizer.ggml.{key}" in tok:
            add(bool(tok[f"tokenizer.ggml.{key}"]))
    if "tokenizer.chat_template" in tok:
        w.add_chat_template(tok["tokenizer.chat_template"])


def _count_shards(path: Path) -> int:
    stem = path.name[: -len(".gguf")]
    return len(list(path.parent.glob(f"{stem}-*-of-*.gguf")))
