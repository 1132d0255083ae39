"""A knowledge-base box for tests: real engines (`aiboxctl serve`) behind one real front door
(``gateway.create_app`` on uvicorn in a thread): all-MiniLM-L6-v2 as the embedding model, the
same encoder with a seeded head as the reranker (tests/bertgguf.py), and, when asked, SmolLM2 as
the chat model. Used by the bench, mixed-load and document-picking tests."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import bertgguf
from test_engine_support import free_port, running_server, smollm2_path
from webstack import ThreadServer

INTERNAL = "internal-kb-7d13"
EMBED, RERANK, CHAT = "minilm-embedding", "minilm-rerank", "smollm2"


@dataclass
class KbBox:
    url: str  # the front door
    engine_configs: dict[str, Path] = field(default_factory=dict)  # model name -> its engine.yaml
    engines: dict[str, str] = field(default_factory=dict)  # model name -> the engine's own URL


def _pooled(tmp: Path, model: Path, name: str, role: str) -> dict:
    return {"model": model, "model_name": name, "role": role, "n_ctx": 2048, "parallel": 64, "threads": 1,
            "queue_size": 64, "repack": False, "api_keys_file": tmp / "engine-keys"}


@contextlib.contextmanager
def kb_box(tmp: Path, *, chat: bool = False, rerank: bool = True) -> Iterator[KbBox]:
    from aiboxctl.gateway.app import create_app
    from aiboxctl.gateway.config import EngineEntry, GatewayConfig

    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "engine-keys").write_text(f"gateway:{INTERNAL}\n")
    wanted = [(EMBED, "embedding", bertgguf.embedding_gguf())]
    if rerank:
        wanted.append((RERANK, "rerank", bertgguf.reranker_gguf()))
    with contextlib.ExitStack() as stack:
        box = KbBox("")
        entries = []
        for name, role, model in wanted:
            d = tmp / name
            d.mkdir(exist_ok=True)
            srv = stack.enter_context(running_server(d, _pooled(tmp, model, name, role)))
            box.engine_configs[name], box.engines[name] = d / "engine.yaml", srv.base
            entries.append(EngineEntry(name=f"{role}-0", models=(name,), role=role, url=srv.base))
        if chat:
            d = tmp / CHAT
            d.mkdir(exist_ok=True)
            cfg = {"model": smollm2_path(), "model_name": CHAT, "n_ctx": 2048, "parallel": 2, "threads": 1,
                   "repack": False, "selftest": False, "flash_attn": "off", "api_keys_file": tmp / "engine-keys",
                   "max_tokens_cap": 24, "kv_unified": False}  # slots laid out as alone: greedy equal (test_engine_gemma)
            srv = stack.enter_context(running_server(d, cfg))
            box.engine_configs[CHAT], box.engines[CHAT] = d / "engine.yaml", srv.base
            entries.append(EngineEntry(name="chat-0", models=(CHAT,), url=srv.base))
        config = GatewayConfig(engines=tuple(entries), internal_token_file=tmp / "engine-keys", health_interval_s=1.0)
        front = stack.enter_context(ThreadServer(create_app(config), free_port()))
        box.url = f"http://127.0.0.1:{front.port}"
        yield box
