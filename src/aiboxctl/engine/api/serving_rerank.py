"""``POST /v1/rerank`` (and ``/rerank``, ``/v1/reranking``) in the Jina/Cohere shape: a query
and documents in, ``results`` out — best first, each with the document's ``index`` in the
request and its ``relevance_score`` (the cross-encoder's logit through a sigmoid: 0..1, as
Jina and Cohere report it; ``raw_score`` keeps the logit), ``top_n`` of them, and the
document's text when ``return_documents``."""

from __future__ import annotations

from typing import Any

from aiboxctl.engine.api.protocol import RerankBody, pooled_usage
from aiboxctl.engine.api.serving_pooled import PooledServing
from aiboxctl.engine.embedding import sigmoid


class RerankServing(PooledServing):
    endpoint = "rerank"
    role = "rerank"
    body_type = RerankBody
    input_param = "documents"

    def inputs(self, body: RerankBody) -> tuple[list[list[int]], Any]:
        rt = self.state.runtime
        texts = body.texts()
        return [rt.rerank_tokens(body.query, doc) for doc in texts], {"query": body.query, "documents": texts}

    def answer(self, body: RerankBody, outputs: list[list[float]], n_tokens: int, model_id: str) -> dict:
        texts = body.texts()
        order = sorted(range(len(outputs)), key=lambda i: -outputs[i][0])
        results = []
        for i in order[: body.top_n or len(order)]:
            item: dict[str, Any] = {"index": i, "relevance_score": sigmoid(outputs[i][0]), "raw_score": outputs[i][0]}
            if body.return_documents:
                item["document"] = {"text": texts[i]}
            results.append(item)
        return {"object": "list", "model": model_id, "results": results, "usage": pooled_usage(n_tokens)}
