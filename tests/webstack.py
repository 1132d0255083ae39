"""The chat page's test stack: a real SmolLM2 engine (``aiboxctl serve``), a stub engine that
replays recorded DeepSeek-R1 streams, and the front door (``gateway.create_app``, which mounts
the page) on uvicorn in a thread, with a key check standing in for the access gate. Used by
tests/test_web_page.py and bench/web.py; Chromium is Debian's, driven by Playwright."""

# No `from __future__ import annotations`: FastAPI reads the stub routes' annotations (Request).

import asyncio
import contextlib
import os
import shutil
import struct
import threading
import time
from pathlib import Path
from typing import Iterator

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
FIXTURES = Path(__file__).parent / "fixtures" / "web"
GOOD_KEY = "aibox-clerk-4f9a2c71e0"
INTERNAL = "internal-web-51c2"
STUB_USAGE = (42, 58)  # the stub engine's usage (prompt, completion) when a stream asks for it


class ThreadServer:
    """uvicorn serving ``app`` on 127.0.0.1:port from a daemon thread."""

    def __init__(self, app, port: int) -> None:
        import uvicorn

        self.port = port
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                                    lifespan="on", access_log=False))
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{port}", daemon=True)

    def __enter__(self) -> "ThreadServer":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise AssertionError(f"uvicorn on port {self.port} did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def stub_r1_app(chunk_delay_s: float = 0.12):
    """A stand-in engine for a reasoning model: /health as the engine answers it, and the
    recorded stream (thinking in ``reasoning_content``, or inline ``<think>`` tags when the
    question says "tags")."""
    from fastapi import FastAPI, Request
    from fastapi.responses import StreamingResponse

    app = FastAPI()
    recordings = {name: (FIXTURES / name).read_text(encoding="utf-8").split("\n\n")
                  for name in ("r1-reasoning-field.sse", "r1-think-tags.sse")}

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": "deepseek-r1", "slots_total": 2, "n_ctx": 8192, "slot_ctx": 4096}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        question = str(body["messages"][-1]["content"])
        events = [e + "\n\n" for e in recordings["r1-think-tags.sse" if "tags" in question
                                                 else "r1-reasoning-field.sse"] if e.strip()]
        if (body.get("stream_options") or {}).get("include_usage"):  # as the engine does: before [DONE]
            events.insert(-1, 'data: {"id": "chatcmpl-r1", "object": "chat.completion.chunk", "choices": [], '
                          f'"usage": {{"prompt_tokens": {STUB_USAGE[0]}, "completion_tokens": {STUB_USAGE[1]}}}}}\n\n')
        if "tail" in question:  # the last answer token, the end and [DONE] in one write, as an engine may
            last = next(i for i, e in enumerate(events) if '"finish_reason": "stop"' in e) - 1
            events[last:] = ["".join(events[last:])]

        async def replay():
            for event in events:
                yield event.encode()
                await asyncio.sleep(chunk_delay_s)

        return StreamingResponse(replay(), media_type="text/event-stream")

    return app


def key_gate():
    """The front door's client gate as the access issue shapes it: a Bearer key or 401."""
    from aiboxctl.gateway.pool import Refusal

    async def gate(request, *_body):
        if request.headers.get("authorization") == f"Bearer {GOOD_KEY}":
            return None
        return Refusal(401, "invalid or expired API key", code="invalid_api_key", type_="authentication_error")

    return gate


@contextlib.contextmanager
def web_stack(tmp: Path, *, max_tokens_cap: int = 200, stub_delay_s: float = 0.12) -> Iterator[str]:
    """Yields the front door's base URL with SmolLM2 ("smollm2") and the stub ("deepseek-r1")."""
    from test_engine_support import free_port, running_server, smollm2_path

    from aiboxctl.gateway.app import create_app
    from aiboxctl.gateway.config import EngineEntry, GatewayConfig

    (tmp / "engine-keys").write_text(f"gateway:{INTERNAL}\n")
    engine_dir = tmp / "engine"
    engine_dir.mkdir(exist_ok=True)
    cfg = {"model": smollm2_path(), "model_name": "smollm2", "n_ctx": 2048, "parallel": 1, "threads": 2,
           "repack": False, "selftest": False, "flash_attn": "off", "api_keys_file": tmp / "engine-keys",
           "max_tokens_cap": max_tokens_cap}
    with running_server(engine_dir, cfg) as engine, ThreadServer(stub_r1_app(stub_delay_s), free_port()) as stub:
        config = GatewayConfig(engines=(
            EngineEntry(name="chat-0", models=("smollm2",), url=engine.base),
            EngineEntry(name="r1-0", models=("deepseek-r1",), url=f"http://127.0.0.1:{stub.port}")),
            internal_token_file=tmp / "engine-keys", health_interval_s=1.0)
        with ThreadServer(create_app(config, gate=key_gate()), free_port()) as front:
            yield f"http://127.0.0.1:{front.port}"


@contextlib.contextmanager
def admin_stack(tmp: Path, *, stub_delay_s: float = 0.01) -> Iterator[tuple[str, dict[str, str]]]:
    """The front door with governed access on (a real AccessGate over a key file and the usage
    ledger) and the stub ("deepseek-r1") alone behind it. Yields the base URL and the keys:
    ``admin`` (an admin key), ``clerk`` and ``legal`` (user keys, legal in a department)."""
    from test_engine_support import free_port

    from aiboxctl.access.gate import AccessControl, AccessSettings
    from aiboxctl.access.keys import KeyLimits, KeyStore
    from aiboxctl.gateway.access import AccessGate
    from aiboxctl.gateway.app import ROUTES, create_app
    from aiboxctl.gateway.config import EngineEntry, GatewayConfig

    (tmp / "engine-keys").write_text(f"gateway:{INTERNAL}\n")
    store = KeyStore(tmp / "keys.json")
    now = time.time()
    keys = {"admin": store.add("it-admin", KeyLimits(admin=True), now=now).secret,
            "clerk": store.add("clerk", KeyLimits(), now=now).secret,
            "legal": store.add("legal-1", KeyLimits(department="legal"), now=now).secret}
    access = AccessControl(AccessSettings(keys_file=tmp / "keys.json", ledger_file=tmp / "usage.db"))
    try:
        with ThreadServer(stub_r1_app(stub_delay_s), free_port()) as stub:
            config = GatewayConfig(engines=(EngineEntry(name="r1-0", models=("deepseek-r1",),
                                                        url=f"http://127.0.0.1:{stub.port}"),),
                                   internal_token_file=tmp / "engine-keys", health_interval_s=1.0)
            with ThreadServer(create_app(config, gate=AccessGate(access, routes=ROUTES)), free_port()) as front:
                yield f"http://127.0.0.1:{front.port}", keys
    finally:
        access.close()


DOC_SHOTS = Path(__file__).resolve().parent.parent / "docs" / "web"
# Set to 1 to refresh docs/web/*.png from a test run (the explicit step docs/web.md names);
# otherwise the screenshots stay in the test's temporary folder.
SHOTS_ENV = "AIBOX_WEB_SCREENSHOTS"


def screenshot(page, folder: Path, name: str) -> Path:
    """The page's viewport as ``folder/name.png``, checked to be a PNG of the viewport's size and
    to render its Chinese text in a CJK font (a box without one shows boxes: .ci/run installs
    fonts-wqy-microhei); copied to docs/web/ only when AIBOX_WEB_SCREENSHOTS=1."""
    path = folder / f"{name}.png"
    page.screenshot(path=str(path))
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    size = page.viewport_size
    assert struct.unpack(">II", head[16:24]) == (size["width"], size["height"]), f"{path}: not the viewport's size"
    assert_cjk_font(page)
    if os.environ.get(SHOTS_ENV) == "1":
        DOC_SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOC_SHOTS / path.name)
    return path


def assert_cjk_font(page) -> None:
    """Every platform font Chromium used for the page's title (Chinese in zh-CN) has the glyphs:
    without a CJK font the text falls back to one that draws boxes (.notdef)."""
    if page.evaluate("document.documentElement.lang") != "zh-CN":
        return
    cdp = page.context.new_cdp_session(page)
    try:
        cdp.send("DOM.enable")
        cdp.send("CSS.enable")
        root = cdp.send("DOM.getDocument")["root"]["nodeId"]
        node = cdp.send("DOM.querySelector", {"nodeId": root, "selector": "h1"})["nodeId"]
        fonts = cdp.send("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]
    finally:
        cdp.detach()
    cjk = ("WenQuanYi", "Noto Sans CJK", "Noto Serif CJK", "Source Han", "Droid Sans Fallback", "AR PL")
    assert any(f["familyName"].startswith(cjk) for f in fonts), \
        f"the Chinese title is drawn in {fonts}: no CJK font (apt-get install fonts-wqy-microhei)"


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
