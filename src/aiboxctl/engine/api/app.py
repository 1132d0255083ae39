"""The FastAPI app over one engine: lifespan (boot on a thread, shutdown), the door's
middleware, and thin routes — each either answers from the engine's state or hands the request
to its endpoint family's serving object.

Why FastAPI/Starlette + uvicorn: well kept, asyncio-native (SSE through StreamingResponse,
disconnects cancel the stream so we can free the slot), pydantic validation for request
bodies, and uvicorn's graceful shutdown on SIGTERM. The HTTP side never calls into llama.cpp's
context: it renders the chat template, tokenises (read-only vocabulary) and hands a request to
the decode loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request as HttpRequest

from aiboxctl.engine.api.edge import CatchAll, Edge, from_loopback
from aiboxctl.engine.api.protocol import RETRY_AFTER_S
from aiboxctl.engine.api.serving_chat import ChatServing
from aiboxctl.engine.api.serving_completions import CompletionServing
from aiboxctl.engine.api.serving_embeddings import EmbeddingServing
from aiboxctl.engine.api.serving_messages import MessagesServing
from aiboxctl.engine.api.serving_rerank import RerankServing
from aiboxctl.engine.api.serving_responses import ResponsesServing
from aiboxctl.engine.state import EngineState, boot, engine_problem, shutdown


def create_app(state: EngineState) -> Any:
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, Response

    @asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        state.loop = asyncio.get_running_loop()
        threading.Thread(target=boot, args=(state,), name="aibox-boot", daemon=True).start()
        yield
        await asyncio.get_running_loop().run_in_executor(None, shutdown, state)

    app = FastAPI(title="aiboxctl engine", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    edge = Edge(state)
    app.add_middleware(CatchAll, on_error=edge.unexpected)
    chat, completions = ChatServing(state, edge), CompletionServing(state, edge)
    embeddings, rerank = EmbeddingServing(state, edge), RerankServing(state, edge)
    responses, messages = ResponsesServing(state, edge), MessagesServing(state, edge)

    @app.get("/health")
    async def health() -> Any:
        engine_problem(state)  # a dead or hung decode loop turns this 503 (and stops the process)
        st = state.selftest
        info: dict[str, Any] = {
            "status": state.status,
            "model": state.config.served_name,
            "fallback": st.fallback if st is not None else None,
            "fallback_reason": st.fallback_reason if st is not None else None,
            "selftest": None if st is None else
            [{"name": a.name, "ok": a.ok, "reason": a.reason, "changes": a.changes} for a in st.attempts],
        }
        sched = state.scheduler
        if state.status == "ok" and state.embedder is not None:  # an embedding or rerank engine
            rt, cfg = state.runtime, state.served_config
            info.update(role=cfg.role, pooling=rt.pooling, dimensions=rt.n_out, max_input_tokens=rt.max_input,
                        queue_depth=state.embedder.queue_depth, n_ctx=rt.n_ctx, repack=cfg.repack)
            return info
        if state.status != "ok" or sched is None:
            if state.reason:
                info["reason"] = state.reason
            return JSONResponse(info, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S * 5)})
        busy = sched.busy_slots
        cfg = state.served_config
        info.update(slots_busy=busy, slots_free=sched.parallel - busy, slots_total=sched.parallel,
                    queue_depth=sched.queue_depth, kv_cells_used=sched.kv_cells_used, n_ctx=cfg.n_ctx,
                    slot_ctx=cfg.slot_ctx, repack=cfg.repack, chat_template=state.template_source)
        return info

    @app.get("/metrics")
    async def metrics(request: HttpRequest) -> Any:
        # From this box without credentials (a local Prometheus): no key needed. Credentials
        # that are presented are checked everywhere: a wrong key is a 401, audited.
        if not (from_loopback(request) and "authorization" not in request.headers):
            _, denied = edge.authorise(request, "metrics")
            if denied is not None:
                return denied
        body, ctype = state.metrics.render()
        return Response(body, media_type=ctype)

    @app.get("/v1/models")
    async def models(request: HttpRequest) -> Any:
        _, denied = edge.authorise(request, "models")
        if denied is not None:
            return denied
        return {"object": "list", "data": [{"id": state.config.served_name, "object": "model",
                                            "created": int(state.started), "owned_by": "aiboxctl"}]}

    def generation(serving: Any) -> Any:
        """A generation endpoint: served by a chat engine, refused in OpenAI's shape by a pooled one."""
        async def route(request: HttpRequest) -> Any:
            return await (serving.handle(request) if state.config.role == "chat" else rerank.wrong_role(request))
        return route

    for path, serving in (("/v1/chat/completions", chat), ("/v1/completions", completions),
                          ("/v1/responses", responses), ("/v1/messages", messages)):
        app.add_api_route(path, generation(serving), methods=["POST"])

    @app.post("/v1/embeddings")
    async def create_embeddings(request: HttpRequest) -> Any:
        return await embeddings.handle(request)

    @app.post("/v1/rerank")
    @app.post("/rerank")
    @app.post("/v1/reranking")
    async def rerank_documents(request: HttpRequest) -> Any:
        return await rerank.handle(request)

    return app
