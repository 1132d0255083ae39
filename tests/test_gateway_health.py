"""Health and ejection: one slow /health answer from a busy engine must not take it out.

Seen on the H200 (bench/device_check.py --steps front-door): two gateways over one engine at 64
streams; the idle one's health poll timed out once and it answered 503 to its next streams. Now a
timed-out check counts a failure and the replica goes out only after ``health_failures`` in a row;
a timeout does not count when the replica relayed bytes since the previous check (busy, not hung);
a refused connection or a not-ok answer still takes it out at once.

The engine whose /health hangs is a real TCP listener (``_ScriptedEngine``: accepts, reads, and
answers only as told) — the system edge; the end-to-end test stops a real SmolLM2 engine with
SIGSTOP. Timeouts are kept small; no timing is asserted."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from aiboxctl.errors import AiboxError
from aiboxctl.gateway.config import gateway_config_from_text
from aiboxctl.gateway.pool import Gateway, Refusal
from aiboxctl.gateway.upstream import EngineClient
from test_engine_support import _die_with_parent, free_port, one_thread_smollm2, wait_until

MODEL = "m"


class _ScriptedEngine:
    """Just enough of an engine over a real socket, in its own thread: GET /health answers ok
    (``mode`` "ok"), answers 503 ("503") or reads the request and never answers ("hang");
    POST /v1/completions streams SSE events until ``release`` is set."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.health_requests = 0
        self.cut_after: int | None = None  # a stream's connection closes after this many events
        self.release = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.port = free_port()
        started = threading.Event()

        async def start() -> None:
            self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
            started.set()

        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        assert started.is_set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop_listening(self) -> None:
        """Close the listening socket: the next connection is refused (the process is gone)."""
        async def close() -> None:
            self.server.close()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)

    def shutdown(self) -> None:
        """Its connections' handlers end (a 'hang' one waits on a client that may still be open)
        before the loop stops, so none is left to a closed loop."""
        self.release.set()

        async def drain() -> None:
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(drain(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                path = head[0].split(" ")[1]
                length = next((int(h.split(":", 1)[1]) for h in head[1:] if h.lower().startswith("content-length:")), 0)
                if length:
                    await reader.readexactly(length)
                if path == "/health":
                    self.health_requests += 1
                    if self.mode == "hang":
                        await reader.read()  # until the client gives up and closes
                        return
                    ok = self.mode == "ok"
                    body = json.dumps({"status": "ok", "model": MODEL, "slots_total": 4, "slot_ctx": 512} if ok
                                      else {"status": "loading"}).encode()
                    writer.write(f"HTTP/1.1 {200 if ok else 503} X\r\ncontent-type: application/json\r\n"
                                 f"content-length: {len(body)}\r\n\r\n".encode() + body)
                    await writer.drain()
                else:  # a stream: one event every 50 ms until released
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                                 b"transfer-encoding: chunked\r\n\r\n")
                    n = 0
                    while not self.release.is_set():
                        if self.cut_after is not None and n >= self.cut_after:
                            return  # the process died mid-answer: no last chunk, the socket closes
                        event = f'data: {{"choices":[{{"index":0,"text":" {n}"}}]}}\n\n'.encode()
                        writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                        await writer.drain()
                        n += 1
                        await asyncio.sleep(0.05)
                    done = b"data: [DONE]\n\n"
                    writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
def engine():
    e = _ScriptedEngine()
    try:
        yield e
    finally:
        e.shutdown()


def _config(url: str, failures: int = 3) -> str:
    return (f"health_timeout_s: 0.3\nhealth_failures: {failures}\n"
            f"engines:\n  - {{name: a, models: [{MODEL}], url: \"{url}\"}}\n")


def test_health_failures_is_validated():
    assert gateway_config_from_text(_config("http://127.0.0.1:9", 3)).health_failures == 3
    assert gateway_config_from_text("engines:\n  - {name: a, models: [x], url: 'http://127.0.0.1:9'}\n"
                                    ).health_failures == 3  # the default
    with pytest.raises(AiboxError) as err:
        gateway_config_from_text(_config("http://127.0.0.1:9", 0))
    assert "health_failures" in str(err.value)


def _run(engine: _ScriptedEngine, scenario) -> None:
    async def main() -> None:
        cfg = gateway_config_from_text(_config(engine.url))
        client = EngineClient(engine.url)  # the front door's own (app.make_clients)
        try:
            gw = Gateway(cfg, {"a": client})
            await scenario(gw, gw.replicas["a"], gw.pools[MODEL])
        finally:
            await client.aclose()

    asyncio.run(main())


def test_a_timed_out_check_counts_and_takes_the_replica_out_only_after_n(engine):
    async def scenario(gw: Gateway, replica, pool) -> None:
        await gw.check(replica)
        assert replica.healthy and replica.slots == 4
        engine.mode = "hang"
        for n in (1, 2):
            await gw.check(replica)
            assert replica.healthy, replica.reason  # slow, still in: requests are served
            assert replica.reason.startswith(f"health check slow ({n}/3)"), replica.reason
            gw.release(await gw.acquire(pool, None))
        await gw.check(replica)  # the third in a row: out
        assert not replica.healthy and "timed out 3 times in a row" in replica.reason, replica.reason
        with pytest.raises(Refusal) as err:
            await gw.acquire(pool, None)
        assert err.value.status == 503 and "timed out" in err.value.message
        engine.mode = "ok"
        await gw.check(replica)  # one good answer brings it back and clears the count
        assert replica.healthy and replica.reason is None
        engine.mode = "hang"
        await gw.check(replica)
        assert replica.healthy and replica.reason.startswith("health check slow (1/3)"), replica.reason

    _run(engine, scenario)


def test_a_refused_connection_or_a_not_ok_answer_still_takes_it_out_at_once(engine):
    async def scenario(gw: Gateway, replica, pool) -> None:
        await gw.check(replica)
        engine.mode = "hang"
        await gw.check(replica)
        assert replica.healthy and "slow (1/3)" in replica.reason
        engine.mode = "503"  # the engine answers, and says it is not ok: out now
        await gw.check(replica)
        assert not replica.healthy and replica.reason == "/health answered 503 (loading)"
        engine.mode = "ok"
        await gw.check(replica)
        engine.mode = "hang"
        await gw.check(replica)
        assert replica.healthy and "slow (1/3)" in replica.reason
        engine.stop_listening()  # the process is gone: connection refused, out now
        await gw.check(replica)
        assert not replica.healthy and "cannot connect" in replica.reason, replica.reason
        with pytest.raises(Refusal):
            await gw.acquire(pool, None)

    _run(engine, scenario)


@contextlib.contextmanager
def _gateway_child(tmp: Path, engines: list[dict], **settings):
    port = free_port()
    (tmp / "gateway.yaml").write_text(yaml.safe_dump({"port": port, **settings, "engines": engines}))
    log = tmp / "gateway.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(Path(sys.executable).with_name("aiboxctl")), "gateway", "--config",
                                 str(tmp / "gateway.yaml")], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=dict(os.environ), preexec_fn=_die_with_parent)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return httpx.get(base + "/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        assert wait_until(up, timeout=60), log.read_text()
        yield base, log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _replica_state(base: str, model: str, name: str) -> tuple[int, str | None, str | None]:
    """(the gateway's /health status, the replica's reason if down, its reason if slow but in)."""
    r = httpx.get(base + "/health", timeout=10)
    m = r.json()["models"][model]
    return r.status_code, m["down"].get(name), m.get("slow", {}).get(name)


def _timed_out_times(reason: str | None) -> int:
    m = re.search(r"timed out (\d+) times in a row", reason or "")
    assert m, reason
    return int(m.group(1))


def _slow_count(reason: str | None) -> int:
    """n of a replica's "health check slow (n/limit)" reason (0: not slow)."""
    m = re.match(r"health check slow \((\d+)/\d+\)", reason or "")
    return int(m.group(1)) if m else 0


def test_bytes_relayed_since_the_last_check_forgive_a_timeout(engine, tmp_path):
    """The replica streams through the front door while its /health hangs: busy, not hung."""
    with _gateway_child(tmp_path, [{"name": "a", "models": [MODEL], "url": engine.url}], health_interval_s=0.2,
                        health_timeout_s=0.3, health_failures=2) as (base, log):
        with httpx.Client(base_url=base, timeout=60) as c, \
                c.stream("POST", "/v1/completions", json={"model": MODEL, "prompt": "x", "stream": True}) as r:
            assert r.status_code == 200
            chunks = r.iter_raw()
            assert next(chunks).startswith(b"data: ")
            engine.mode = "hang"
            seen = engine.health_requests
            # when the fifth check arrives, four have timed out while the stream was relaying
            assert wait_until(lambda: engine.health_requests >= seen + 5, timeout=60), log.read_text()
            assert _replica_state(base, MODEL, "a") == (200, None, None), log.read_text()[-2000:]
            engine.release.set()
            assert b"".join(chunks).endswith(b"data: [DONE]\n\n")
        # nothing relayed any more: the timeouts count, and two in a row take it out
        assert wait_until(lambda: _replica_state(base, MODEL, "a")[0] == 503, timeout=60), log.read_text()
        # out at the second in a row; the poller counts on while it is out (a loaded box reads it later)
        assert _timed_out_times(_replica_state(base, MODEL, "a")[1]) >= 2


def test_an_answer_cut_by_its_engine_is_cut_for_the_client_and_takes_the_replica_out(engine, tmp_path):
    """The engine's connection closes mid-stream (no terminating chunk): the relay must not pass
    it off as a whole answer — the client's connection is cut too (its HTTP client sees the body
    end early), the replica goes out with the reason, and /metrics counts a 502 and a stream error."""
    engine.cut_after = 3
    with _gateway_child(tmp_path, [{"name": "a", "models": [MODEL], "url": engine.url}],
                        health_interval_s=30) as (base, log):
        with httpx.Client(base_url=base, timeout=60) as c:
            with pytest.raises(httpx.RemoteProtocolError), \
                    c.stream("POST", "/v1/completions", json={"model": MODEL, "prompt": "x", "stream": True}) as r:
                assert r.status_code == 200
                b"".join(r.iter_raw())
            status, down, _ = _replica_state(base, MODEL, "a")
            assert status == 503 and down.startswith("answer cut: "), (status, down, log.read_text()[-2000:])
            metrics = c.get("/metrics").text
        assert 'aibox_gateway_upstream_errors_total{kind="stream",model="' + MODEL + '",replica="a"} 1.0' in metrics, metrics
        assert re.search(r'aibox_gateway_requests_total\{[^}]*status="502"[^}]*\} 1\.0', metrics), metrics


@pytest.fixture(scope="module")
def smollm2_engine(tmp_path_factory):
    with one_thread_smollm2(tmp_path_factory.mktemp("health-engine"), n_ctx=1024, max_tokens_cap=64) as server:
        yield server


def test_a_stopped_engine_stays_in_for_n_checks_then_goes_out_and_comes_back(smollm2_engine, tmp_path):
    """SIGSTOP: the checks time out, the replica stays in (a request sent then is answered after
    SIGCONT, not refused), and goes out only after health_failures timeouts; SIGCONT: back in."""
    proc = smollm2_engine.proc
    chat = {"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "temperature": 0}
    with _gateway_child(tmp_path, [{"name": "chat-0", "models": ["smollm2"], "url": smollm2_engine.base}],
                        health_interval_s=0.5, health_timeout_s=0.3, health_failures=6) as (base, log), \
            httpx.Client(base_url=base, timeout=120) as c, ThreadPoolExecutor(1) as pool:
        def slow(n: int) -> bool:  # n or more timed out in a row, and still in (a loaded box reads late)
            status, down, slow_reason = _replica_state(base, "smollm2", "chat-0")
            assert down is None, f"out before the test saw it slow: {down}"
            return _slow_count(slow_reason) >= n

        proc.send_signal(signal.SIGSTOP)
        try:
            assert wait_until(lambda: slow(1), timeout=60, interval=0.05), log.read_text()[-2000:]
            assert c.get("/health").status_code == 200  # in, not degraded
            sent = pool.submit(c.post, "/v1/chat/completions", json=chat)
            assert wait_until(lambda: slow(2), timeout=60, interval=0.05), log.read_text()[-2000:]
        finally:
            proc.send_signal(signal.SIGCONT)
        answer = sent.result()
        assert answer.status_code == 200, answer.text  # served once the engine ran again, never a 503
        assert wait_until(lambda: _replica_state(base, "smollm2", "chat-0") == (200, None, None), timeout=60)

        proc.send_signal(signal.SIGSTOP)
        try:
            assert wait_until(lambda: _replica_state(base, "smollm2", "chat-0")[0] == 503, timeout=60)
            _, down, _ = _replica_state(base, "smollm2", "chat-0")
            assert _timed_out_times(down) >= 6, down
            refused = c.post("/v1/chat/completions", json=chat)
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "model_unavailable"
        finally:
            proc.send_signal(signal.SIGCONT)
        assert wait_until(lambda: _replica_state(base, "smollm2", "chat-0") == (200, None, None), timeout=60)
        assert c.post("/v1/chat/completions", json=chat).status_code == 200
