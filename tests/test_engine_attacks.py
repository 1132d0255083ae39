"""The engine's HTTP edge under hostile or careless clients (issue 11 items 4, 7-11): oversized
and chunked bodies, a stalled tokeniser, clients that hang up, absurdly nested JSON, wrong keys,
a model that does not load, and ports that are not ports.

The HTTP tests run the real app on uvicorn over loopback, in this process so that a test can
hold the real runtime's tokeniser on an Event; the model is SmolLM2-135M-Instruct and the
configuration is proven by the engine's own self-test first, as `aiboxctl serve` does."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from test_engine_support import SERVER_START_TIMEOUT, free_port, smollm2_path, wait_until

KEY = "sk-edge-4b1d07"
BODY_LIMIT = 256 * 1024
HANG_GUARD_S = 600  # only so a broken build cannot hang the suite; never a timing assertion


# --- the server --------------------------------------------------------------------------

@dataclass
class Edge:
    state: Any
    base: str
    audit_path: Path

    def audit(self) -> list[dict]:
        return [json.loads(x) for x in self.audit_path.read_text().splitlines()] if self.audit_path.exists() else []

    def metric(self, http: httpx.Client, endpoint: str, status: int) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        for fam in text_string_to_metric_families(http.get("/metrics").text):
            for s in fam.samples:
                if s.name == "aibox_requests_total" and s.labels == {"endpoint": endpoint, "status": str(status)}:
                    return s.value
        return 0.0


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    import uvicorn

    from aiboxctl.engine.config import EngineConfig
    from aiboxctl.engine.security import AuditLog, KeyRing
    from aiboxctl.engine.api.app import create_app
    from aiboxctl.engine.state import EngineState

    tmp = tmp_path_factory.mktemp("edge")
    (tmp / "keys").write_text(f"tester:{KEY}\n")
    cfg = EngineConfig(model=smollm2_path(), model_name="smollm2", n_ctx=4096, parallel=2, threads=1,
                       flash_attn="off", kv_unified=False, max_tokens_cap=4096, queue_size=4,
                       max_body_bytes=BODY_LIMIT, api_keys_file=tmp / "keys", audit_log=tmp / "audit.jsonl")
    state = EngineState(cfg)
    state.keys = KeyRing.load(cfg.api_keys_file)
    state.audit = AuditLog(cfg.audit_log, content=False)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(state), host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, name="edge-uvicorn", daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: state.status in ("ok", "failed"), timeout=SERVER_START_TIMEOUT, interval=0.3)
        assert state.status == "ok", state.reason
        yield Edge(state, f"http://127.0.0.1:{port}", tmp / "audit.jsonl")
    finally:
        server.should_exit = True
        thread.join(60)


@pytest.fixture(scope="module")
def http(edge):
    with httpx.Client(base_url=edge.base, headers={"Authorization": f"Bearer {KEY}"}, timeout=HANG_GUARD_S) as c:
        yield c


def _raw_request(base: str, head: str, body_parts: list[bytes]) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    sock.sendall(head.encode())
    for part in body_parts:
        try:
            sock.sendall(part)
        except (BrokenPipeError, ConnectionResetError):  # the server answered and closed early
            break
    return sock


def _read_response(sock: socket.socket) -> tuple[int, dict]:
    """Status and JSON body of one HTTP/1.1 response read off a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(int(x.split(":", 1)[1]) for x in lines[1:] if x.lower().startswith("content-length:"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk
        rest += chunk
    return status, json.loads(rest[:length])


def _head(path: str, extra: str) -> str:
    return (f"POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\n{extra}\r\n")


# --- item 4: body limit, work off the event loop -----------------------------------------

def test_body_limit_is_sized_from_the_context_and_configurable():
    from aiboxctl.engine.config import BODY_FLOOR_BYTES, EngineConfig, engine_config_from_mapping
    from aiboxctl.errors import UsageError

    model = smollm2_path()
    assert EngineConfig(model=model, n_ctx=4096).body_limit == BODY_FLOOR_BYTES == 1 << 20
    assert EngineConfig(model=model, n_ctx=131072).body_limit == 64 * 131072  # 8 MiB
    assert engine_config_from_mapping({"model": str(model), "max_body_bytes": 4096}).body_limit == 4096
    with pytest.raises(UsageError, match="max_body_bytes"):
        EngineConfig(model=model, max_body_bytes=10)


def test_declared_oversized_body_is_413_before_it_is_read(edge, http):
    before = edge.metric(http, "completions", 413)
    # 50 MB announced, a few bytes sent: the answer must come without the server waiting for the rest
    sock = _raw_request(edge.base, _head("/v1/completions", "Content-Length: 50000000\r\n"), [b'{"prompt": "'])
    with sock:
        status, body = _read_response(sock)
    assert status == 413
    assert body["error"]["code"] == "request_too_large" and str(BODY_LIMIT) in body["error"]["message"]
    assert edge.metric(http, "completions", 413) == before + 1
    assert edge.audit()[-1]["status"] == 413 and edge.audit()[-1]["key_id"] == "tester"


def test_chunked_oversized_body_is_413(edge):
    chunk = b"a" * 32768
    parts = [b'14\r\n{"prompt": "aaaaaaaa\r\n']  # 0x14 = 20 bytes
    parts += [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * (BODY_LIMIT // len(chunk) + 2)
    parts += [b'2\r\n"}\r\n0\r\n\r\n']
    sock = _raw_request(edge.base, _head("/v1/completions", "Transfer-Encoding: chunked\r\n"), parts)
    with sock:
        status, body = _read_response(sock)
    assert status == 413 and body["error"]["type"] == "invalid_request_error"


def test_health_answers_while_a_prompt_is_being_tokenised(edge, http, monkeypatch):
    """The tokeniser of a large (allowed) request is held on an Event: /health, /v1/models and
    another client's body parsing must still be served by the event loop meanwhile."""
    rt = edge.state.runtime
    original = rt.tokenize
    entered, release = threading.Event(), threading.Event()
    held_once = threading.Lock()

    def held(text: str, **kwargs: Any) -> list[int]:
        if len(text) > 100_000 and held_once.acquire(blocking=False):
            entered.set()
            release.wait(HANG_GUARD_S)
        return original(text, **kwargs)

    monkeypatch.setattr(rt, "tokenize", held)
    big = {"prompt": "word " * 40_000, "max_tokens": 4}  # ~200 kB: under the limit, over the context
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(http.post, "/v1/completions", json=big)
        try:
            assert entered.wait(HANG_GUARD_S)
            with httpx.Client(base_url=edge.base, timeout=60) as probe:  # a hang here fails the test
                h = probe.get("/health")
                assert h.status_code == 200 and h.json()["status"] == "ok"
                bad = probe.post("/v1/completions", content=b"{", headers={"Authorization": f"Bearer {KEY}"})
                assert bad.status_code == 400
        finally:
            release.set()
        r = pending.result()
    # a prompt that tokenises to more than a slot holds is refused with the limit named
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


# --- item 7: a non-streaming client that hangs up ---------------------------------------

def test_non_streaming_disconnect_frees_the_slot_and_is_audited_499(edge, http):
    seen = len(edge.audit())
    max_tokens = 1000
    body = json.dumps({"prompt": "Count from one to one thousand: one, two,", "max_tokens": max_tokens,
                       "temperature": 0, "ignore_eos": True}).encode()
    sock = _raw_request(edge.base, _head("/v1/completions", f"Content-Length: {len(body)}\r\n"), [body])
    with sock:
        assert wait_until(lambda: http.get("/health").json()["slots_busy"] >= 1, timeout=HANG_GUARD_S)
        assert wait_until(lambda: any(s.req is not None and s.req.completion_tokens > 0
                                      for s in edge.state.scheduler.slots), timeout=HANG_GUARD_S)
    # the socket is closed: the slot must come free, and the request be recorded as abandoned
    assert wait_until(lambda: http.get("/health").json()["slots_busy"] == 0, timeout=HANG_GUARD_S)
    assert wait_until(lambda: any(r["endpoint"] == "completions" for r in edge.audit()[seen:]), timeout=HANG_GUARD_S)
    rec = next(r for r in edge.audit()[seen:] if r["endpoint"] == "completions")
    assert rec["status"] == 499 and rec["error"] == "client gone"
    assert rec["completion_tokens"] < max_tokens  # cancelled, not generated to the end
    assert edge.metric(http, "completions", 499) >= 1


# --- item 8: JSON that breaks the parser; any unexpected error ---------------------------

@pytest.mark.parametrize("body", [b"[" * 100_000 + b"]" * 100_000,
                                  b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"])
def test_unparseable_body_is_400_json_counted_and_audited(edge, http, body):
    before = edge.metric(http, "completions", 400)
    seen = len(edge.audit())
    r = http.post("/v1/completions", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["code"] == "invalid_json"
    assert edge.metric(http, "completions", 400) == before + 1
    assert [x["status"] for x in edge.audit()[seen:]] == [400]


def test_an_unexpected_error_is_an_openai_json_500_counted_and_audited(edge, http, monkeypatch):
    def broken(*_a: Any, **_k: Any) -> list[int]:
        raise RuntimeError("tokeniser exploded")

    monkeypatch.setattr(edge.state.runtime, "tokenize", broken)
    before = edge.metric(http, "chat", 500)
    seen = len(edge.audit())
    r = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
    assert "RuntimeError" in r.json()["error"]["message"]
    assert edge.metric(http, "chat", 500) == before + 1
    rec = edge.audit()[seen:]
    assert [(x["status"], x["key_id"], x["endpoint"]) for x in rec] == [(500, "tester", "chat")]


# --- item 9: rejected keys are audited (by fingerprint) ----------------------------------

def test_rejected_keys_are_audited_by_fingerprint_never_the_key(edge):
    seen = len(edge.audit())
    wrong = "sk-guess-0f9e8d7c"
    r1 = httpx.post(edge.base + "/v1/completions", json={"prompt": "hi"}, headers={"Authorization": f"Bearer {wrong}"})
    r2 = httpx.post(edge.base + "/v1/chat/completions", json={"messages": []})
    r3 = httpx.get(edge.base + "/metrics", headers={"Authorization": f"Bearer {wrong}"})
    r4 = httpx.get(edge.base + "/v1/models", headers={"Authorization": "Basic dXNlcjpwdw=="})
    assert {r.status_code for r in (r1, r2, r3, r4)} == {401}
    rejected = [x for x in edge.audit()[seen:] if x["status"] == 401]
    fp = "sha256:" + hashlib.sha256(wrong.encode()).hexdigest()[:12]
    assert [(x["endpoint"], x["key_id"], x["key_fingerprint"]) for x in rejected] == [
        ("completions", None, fp), ("chat", None, None), ("metrics", None, fp),
        ("models", None, "sha256:" + hashlib.sha256(b"Basic dXNlcjpwdw==").hexdigest()[:12])]
    assert all(x["client"] == "127.0.0.1" for x in rejected)
    assert wrong not in edge.audit_path.read_text() and "dXNlcjpwdw" not in edge.audit_path.read_text()


# --- item 10: a model that does not load is a failed serve --------------------------------

@pytest.mark.parametrize("selftest", [False, True], ids=["no-selftest", "selftest"])
def test_serve_exits_nonzero_with_the_loader_reason_when_the_model_does_not_load(cli_proc, tmp_path, selftest):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x7f" * 4096)  # a GGUF magic, then garbage
    args = ["serve", "--model", str(bad), "--port", str(free_port()), "--threads", "1"]
    r = cli_proc(*args, *([] if selftest else ["--no-selftest"]), timeout=HANG_GUARD_S)
    assert r.code not in (0, None), r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert "broken.gguf" in last and "Traceback" not in r.stderr
    assert "stopped (" not in r.stdout + r.stderr


# --- item 11: ports are validated at the edge ---------------------------------------------

@pytest.mark.parametrize("port", ["70000", "-1", "0"])
def test_bad_port_is_a_usage_error_at_the_edge(cli, port):
    for args in (["install", "--profile", "demo", "--dry-run", "--yes"],
                 ["serve", "--model", str(smollm2_path()), "--no-selftest"]):
        r = cli(*args, "--port", port)
        assert r.code == 2, (args, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert "not in the range 1<=x<=65535" in lines[0] and "Traceback" not in r.stderr
        j = cli("--json", *args, "--port", port)
        assert j.code == 2 and j.json()["exit_code"] == 2 and j.json()["errors"][0]["code"] == "usage"
