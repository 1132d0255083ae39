"""Admission on the front door's event loop: a request that needs nothing but memory is admitted
without a thread hop (counted by the loop's default executor); everything that reads or writes —
a refusal (recorded), a changed key file, a failing ledger, a key's first request of a day —
still goes through ``admit`` in a thread and behaves exactly as before. Through a real FastAPI
app over httpx's ASGI transport, on one event loop whose default executor counts."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from fastapi import FastAPI, Request  # module level: FastAPI reads the routes' annotations here
from fastapi.responses import JSONResponse

from aiboxctl.access.gate import AccessControl, AccessSettings, NotRecorded
from aiboxctl.access.keys import KeyLimits, KeyStore
from aiboxctl.access.ledger import Ledger, iter_records
from aiboxctl.access.limits import Limiter
from aiboxctl.access.refusal import AccessDenied
from aiboxctl.gateway.access import AccessGate, UsageMeter

ROUTES = {"/v1/chat/completions": ("chat", "chat")}
BODY = {"model": "qwen", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


class CountingExecutor(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(max_workers=4)
        self.submits = 0

    def submit(self, *args, **kwargs):
        self.submits += 1
        return super().submit(*args, **kwargs)


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _app(gate: AccessGate, executor: CountingExecutor, hops: list[int]) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        raw = await request.body()
        before = executor.submits
        refusal = await gate(request, json.loads(raw), len(raw))
        hops.append(executor.submits - before)  # threads used by the admission alone
        if refusal is not None:
            return JSONResponse(refusal.body(), status_code=refusal.status, headers=refusal.headers())
        meter = UsageMeter()
        meter.feed(json.dumps({"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 7}}).encode())
        try:
            await gate.finish(request.state.aibox_admission, 200, meter)
        except NotRecorded as exc:  # the front door would never send the answer's end
            return JSONResponse({"error": {"code": "not_recorded", "message": str(exc)}}, status_code=500)
        return {"ok": True}

    return app


def drive(access: AccessControl, steps) -> list[int]:
    """Run ``steps(post)`` on one loop with a counting default executor; the hops per request."""
    hops: list[int] = []

    async def main() -> None:
        executor = CountingExecutor()
        asyncio.get_running_loop().set_default_executor(executor)
        app = _app(AccessGate(access, routes=ROUTES), executor, hops)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://front") as client:
            async def post(secret: str, **body) -> httpx.Response:
                return await client.post("/v1/chat/completions", json={**BODY, **body},
                                         headers={"Authorization": f"Bearer {secret}"})
            await steps(post)

    asyncio.run(main())
    return hops


def _access(tmp_path, now=time.time, **settings) -> AccessControl:
    return AccessControl(AccessSettings(keys_file=tmp_path / "keys.json", ledger_file=tmp_path / "usage.db",
                                        audit_file=tmp_path / "audit.jsonl", **settings), now=now)


def _statuses(tmp_path) -> list[int]:
    return [r.status for r in iter_records(tmp_path / "usage.db")]


def test_a_normal_admission_takes_no_thread_and_refusals_go_through_admit(tmp_path):
    store = KeyStore(tmp_path / "keys.json")
    alice = store.add("alice", KeyLimits(models=("qwen",), rpm=3), now=time.time()).secret
    access = _access(tmp_path)
    seen: list[int] = []

    async def steps(post):
        seen.append((await post(alice)).status_code)  # the key's first request: its day is read
        seen.append((await post(alice)).status_code)
        r = await post(alice, model="deepseek")
        seen.append(r.status_code)
        assert r.json()["error"]["code"] == "model_not_allowed"
        seen.append((await post(alice)).status_code)
        r = await post(alice)  # the 4th in a minute
        seen.append(r.status_code)
        assert "requests per minute" in r.json()["error"]["message"] and int(r.headers["Retry-After"]) >= 1
        seen.append((await post("sk-aibox-000000000000-wrong")).status_code)

    hops = drive(access, steps)
    access.close()
    assert seen == [200, 200, 403, 200, 429, 401]
    assert hops == [1, 0, 1, 0, 1, 1]
    assert _statuses(tmp_path) == [200, 200, 403, 200, 429]  # refusals recorded, as before
    events = [json.loads(line)["event"] for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert events.count("denied") == 3 and events.count("request") == 3


def test_a_changed_key_file_is_read_in_a_thread(tmp_path):
    store = KeyStore(tmp_path / "keys.json")
    alice = store.add("alice", KeyLimits(), now=time.time()).secret
    access = _access(tmp_path)
    seen: list[int] = []

    async def steps(post):
        seen.append((await post(alice)).status_code)
        seen.append((await post(alice)).status_code)
        bob = store.add("bob", KeyLimits(), now=time.time()).secret  # the file is rewritten
        seen.append((await post(alice)).status_code)
        seen.append((await post(bob)).status_code)
        seen.append((await post(alice)).status_code)
        store.revoke("alice", now=time.time())
        r = await post(alice)
        seen.append(r.status_code)
        assert r.json()["error"]["code"] == "revoked_api_key"

    hops = drive(access, steps)
    access.close()
    assert seen == [200, 200, 200, 200, 200, 401]
    # alice: day read, on the loop; the file changed: re-read; bob's first request: his day; on the
    # loop; the revocation: re-read in a thread and refused there
    assert hops == [1, 0, 1, 1, 0, 1]


def test_a_failing_ledger_refuses_in_a_thread_and_recovers(tmp_path):
    """Another connection holds the ledger's write lock: a finish cannot be written, the ledger is
    failing, and from then on admission probes it in a thread (503 while it fails, as before)
    until a probe write succeeds; then admission is back on the loop."""
    store = KeyStore(tmp_path / "keys.json")
    alice = store.add("alice", KeyLimits(), now=time.time()).secret
    access = _access(tmp_path)
    access.ledger.close()
    access.ledger = Ledger(tmp_path / "usage.db", busy_timeout_s=0.2)
    seen: list[tuple[int, str | None]] = []

    async def steps(post):
        async def one() -> None:
            r = await post(alice)
            seen.append((r.status_code, r.json().get("error", {}).get("code")))

        await one()
        holder = sqlite3.connect(tmp_path / "usage.db", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        await one()  # admitted on the loop; its ledger row cannot be written
        await one()  # the ledger is failing: the probe fails too, refused
        holder.execute("ROLLBACK")
        holder.close()
        access._probed = float("-inf")  # the probe interval has passed
        await one()  # the probe, in a thread, succeeds: admitted
        await one()

    hops = drive(access, steps)
    access.close()
    assert seen == [(200, None), (500, "not_recorded"), (503, "recording_unavailable"), (200, None), (200, None)]
    assert hops == [1, 0, 1, 1, 0]
    assert _statuses(tmp_path) == [200, 200, 200]  # the 503 is not in the ledger that could not record it
    denied = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()
              if json.loads(line)["event"] == "denied"]
    assert [d["code"] for d in denied] == ["recording_unavailable"]


def test_a_key_s_first_request_of_a_new_day_reads_the_ledger_in_a_thread(tmp_path):
    clock = Clock(time.mktime((2026, 11, 30, 12, 0, 0, 0, 0, -1)))
    store = KeyStore(tmp_path / "keys.json")
    alice = store.add("alice", KeyLimits(tokens_per_day=100), now=clock.t - 10).secret
    access = _access(tmp_path, now=clock)
    seen: list[int] = []

    async def steps(post):
        for _ in range(3):
            seen.append((await post(alice, max_tokens=5)).status_code)
        clock.t += 86400  # the next day
        for _ in range(2):
            seen.append((await post(alice, max_tokens=5)).status_code)

    hops = drive(access, steps)
    access.close()
    assert seen == [200] * 5
    assert hops == [1, 0, 0, 1, 0]
    assert access.limiter._keys["alice"].used == 2 * 18  # today's two (11 + 7 each): yesterday's not counted


def test_admission_on_the_loop_and_in_threads_holds_the_limits_exactly():
    """admit_nowait (the loop's) and admit (threads') share the lock: however they interleave, a
    key gets exactly its requests per minute, and exactly its concurrency while none settles."""
    from aiboxctl.access.keys import KeyRecord

    by_rpm = KeyRecord("r", "0" * 12, "00", "0" * 64, 0.0, rpm=50)
    by_concurrency = KeyRecord("c", "1" * 12, "00", "0" * 64, 0.0, concurrency=7)
    limiter = Limiter()
    got: dict[str, list] = {"r": [], "c": []}
    start = threading.Barrier(8)

    def worker(i: int) -> None:
        start.wait()
        for n in range(40):
            for key in (by_rpm, by_concurrency):
                try:
                    ticket = limiter.admit_nowait(key, 5) if (i + n) % 2 else limiter.admit(key, 5)
                except AccessDenied:
                    ticket = None
                if ticket is not None:
                    got[key.name].append(ticket)
                    if key is by_rpm:
                        limiter.settle(ticket, 3)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got["r"]) == 50 and len(got["c"]) == 7
    assert limiter._keys["r"].in_flight == 0 and limiter._keys["c"].in_flight == 7
