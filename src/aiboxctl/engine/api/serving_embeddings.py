"""``POST /v1/embeddings`` in OpenAI's shape: string, list, token-array inputs; unit vectors as
floats or base64 (float32 little-endian); ``dimensions`` where the model was trained for
truncated vectors (Matryoshka: the first N values, renormalised; the ``matryoshka`` setting),
else only its own width; usage counts the input tokens."""

from __future__ import annotations

from typing import Any

from aiboxctl.engine.api.edge import Rejected
from aiboxctl.engine.api.protocol import EmbeddingBody, embedding_data, pooled_usage
from aiboxctl.engine.api.serving_pooled import PooledServing
from aiboxctl.engine.embedding import normalise


class EmbeddingServing(PooledServing):
    endpoint = "embeddings"
    role = "embedding"
    body_type = EmbeddingBody
    input_param = "input"

    def inputs(self, body: EmbeddingBody) -> tuple[list[list[int]], Any]:
        rt = self.state.runtime
        width = rt.n_out
        if body.dimensions is not None and body.dimensions != width:
            if not self.state.config.matryoshka:
                raise Rejected(400, f"this model gives {width}-dimensional vectors and was not trained for "
                                    "shorter ones (Matryoshka); leave out 'dimensions'", param="dimensions",
                               code="invalid_value", audit_error="invalid request")
            if body.dimensions > width:
                raise Rejected(400, f"dimensions must be at most {width} for this model", param="dimensions",
                               code="invalid_value", audit_error="invalid request")
        raw = body.input
        if isinstance(raw, str) or (raw and isinstance(raw[0], str)):
            texts = [raw] if isinstance(raw, str) else list(raw)
            return [rt.tokenize(t, add_special=True, parse_special=False) for t in texts], texts
        arrays = [raw] if isinstance(raw[0], int) else list(raw)
        for arr in arrays:
            bad = [t for t in arr if not 0 <= t < rt.n_vocab]
            if bad:
                raise ValueError(f"token id {bad[0]} is not in this model's vocabulary (0..{rt.n_vocab - 1})")
        return [list(a) for a in arrays], arrays

    def answer(self, body: EmbeddingBody, outputs: list[list[float]], n_tokens: int, model_id: str) -> dict:
        dims = body.dimensions
        data = []
        for i, vec in enumerate(outputs):
            vec = normalise(vec[:dims] if dims else vec)
            data.append(embedding_data(i, vec, body.encoding_format))
        return {"object": "list", "data": data, "model": model_id, "usage": pooled_usage(n_tokens)}
