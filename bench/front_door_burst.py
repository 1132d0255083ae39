#!/usr/bin/env python3
"""What the front door adds when many requests arrive at once: N streams sent in the same
millisecond, against the same engine reached directly (the anchor), through the front door, and
through the front door with governed access (keys, limits, ledger, audit).

The engine here is a stand-in (this file run with ``--stand-in``): an HTTP/1.1 server that answers
``/v1/completions`` streams in the engine's SSE shape after a fixed prefill delay, one token per
fixed step, with ``/health`` like the engine's, and stamps each answer with the moment the request
reached it (``x-stand-in-arrived``, CLOCK_MONOTONIC, system-wide). A real engine's TTFT at N
streams is its batched prefill (seconds on this 2-core machine), which buries the milliseconds a
front door adds and makes them depend on where in a batch a request lands; the stand-in's fixed
delay leaves only the path in front of it to measure. The client is as cheap: a request per
warmed keep-alive socket, written back to back (the whole burst leaves in well under a
millisecond; h11 reads the answers), because an httpx client sending 64 requests spends ~300 ms
of its own CPU doing so and spreads the burst it means to measure.

Printed per level and side: forwarding (from the burst's start to the request's arrival at the
engine: p50 and max over every request of every round), TTFT p50 and p90, aggregate tok/s (median
of rounds), and what the front door adds to the anchor's TTFT p50 (goal ≤ 5 ms at one stream,
issue 14) and access adds to the front door's (goal ≤ 3 ms, issue 16). Rounds rotate the sides.

    .venv/bin/python bench/front_door_burst.py [--levels 1,16,64] [--rounds 5] [--tokens 32]
                                               [--prefill-ms 100] [--step-ms 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import h11
import yaml
from front_door import spawn, start  # bench/, this script's folder
from serve_throughput import free_port

TOKEN = "bench-internal"
MODEL = "smollm2"


# ---- the engine stand-in -------------------------------------------------------------------

def _event(i: int, last: bool) -> bytes:
    doc = {"id": "cmpl-stand-in", "object": "text_completion", "created": 0, "model": MODEL,
           "choices": [{"index": 0, "text": " token", "logprobs": None, "finish_reason": "length" if last else None}]}
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


async def _stand_in_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                               prefill: float, step: float) -> None:
    conn = h11.Connection(h11.SERVER)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def next_event() -> object:
        while True:
            ev = conn.next_event()
            if ev is not h11.NEED_DATA:
                return ev
            conn.receive_data(await reader.read(65536))

    try:
        while True:
            req = await next_event()
            if not isinstance(req, h11.Request):
                return
            arrived = time.monotonic()
            body = b""
            while not isinstance(ev := await next_event(), h11.EndOfMessage):
                body += ev.data  # type: ignore[attr-defined]
            if req.method == b"GET":
                doc = json.dumps({"status": "ok", "model": MODEL, "slots_total": 512, "slot_ctx": 4096}).encode()
                writer.write(conn.send(h11.Response(status_code=200, headers=[
                    ("content-type", "application/json"), ("content-length", str(len(doc)))])) + conn.send(h11.Data(data=doc))
                    + conn.send(h11.EndOfMessage()))
            else:
                data = json.loads(body)
                n = int(data.get("max_tokens") or 16)
                writer.write(conn.send(h11.Response(status_code=200, headers=[
                    ("content-type", "text/event-stream"), ("transfer-encoding", "chunked"),
                    ("x-stand-in-arrived", f"{arrived:.6f}")])))
                await writer.drain()
                await asyncio.sleep(prefill)
                for i in range(n):
                    writer.write(conn.send(h11.Data(data=_event(i, i == n - 1))))
                    await writer.drain()
                    if i < n - 1:
                        await asyncio.sleep(step)
                if (data.get("stream_options") or {}).get("include_usage"):
                    usage = {"id": "cmpl-stand-in", "object": "text_completion", "created": 0, "model": MODEL,
                             "choices": [], "usage": {"prompt_tokens": 8, "completion_tokens": n, "total_tokens": n + 8}}
                    writer.write(conn.send(h11.Data(data=b"data: " + json.dumps(usage).encode() + b"\n\n")))
                writer.write(conn.send(h11.Data(data=b"data: [DONE]\n\n")) + conn.send(h11.EndOfMessage()))
            await writer.drain()
            conn.start_next_cycle()
    except (ConnectionError, h11.RemoteProtocolError):
        pass
    finally:
        writer.close()


def stand_in(port: int, prefill: float, step: float) -> None:
    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: _stand_in_connection(r, w, prefill, step), "127.0.0.1", port,
                                            backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# ---- the client -----------------------------------------------------------------------------

class Stream:
    """One keep-alive connection: a request written, its answer read with h11."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, key: str) -> None:
        self.reader, self.writer, self.host, self.key = reader, writer, host, key
        self.conn = h11.Connection(h11.CLIENT)

    def request(self, body: dict) -> bytes:
        raw = json.dumps(body).encode()
        head = h11.Request(method="POST", target="/v1/completions", headers=[
            ("host", self.host), ("content-type", "application/json"), ("authorization", f"Bearer {self.key}"),
            ("content-length", str(len(raw)))])
        return self.conn.send(head) + self.conn.send(h11.Data(data=raw)) + self.conn.send(h11.EndOfMessage())

    async def answer(self) -> tuple[float | None, int, float | None]:
        """(monotonic time of the first token event, token events, the stand-in's arrival stamp)."""
        first, tokens, arrived, tail = None, 0, None, b""
        while True:
            ev = self.conn.next_event()
            if ev is h11.NEED_DATA:
                self.conn.receive_data(await self.reader.read(65536))
                continue
            if isinstance(ev, h11.Response):
                if ev.status_code != 200:
                    raise RuntimeError(f"HTTP {ev.status_code}")
                stamp = dict(ev.headers).get(b"x-stand-in-arrived")
                arrived = float(stamp) if stamp else None
            elif isinstance(ev, h11.Data):
                seen = (tail + ev.data).count(b'data: {"id"') - tail.count(b'data: {"id"')
                if seen and first is None:
                    first = time.monotonic()
                tokens += seen
                tail = (tail + ev.data)[-12:]
            elif isinstance(ev, h11.EndOfMessage):
                self.conn.start_next_cycle()
                return first, tokens, arrived


async def burst(base: str, key: str, n: int, tokens: int) -> tuple[float, list[float], list[float]]:
    """(aggregate tok/s, each stream's TTFT in s, each request's forwarding in s) of ``n`` streams
    written in one go on ``n`` connections opened and warmed beforehand."""
    host, port = base.rsplit("//", 1)[1].split(":")
    streams = []
    for _ in range(n):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        streams.append(Stream(reader, writer, f"{host}:{port}", key))

    def body(i: int, k: int) -> dict:
        return {"model": MODEL, "prompt": f"Story number {i}: once upon a time", "max_tokens": k,
                "temperature": 0, "ignore_eos": True, "stream": True}

    try:
        for s, raw in [(s, s.request(body(-1 - i, 2))) for i, s in enumerate(streams)]:
            s.writer.write(raw)
        await asyncio.gather(*(s.answer() for s in streams))
        await asyncio.sleep(0.2)
        raws = [s.request(body(i, tokens)) for i, s in enumerate(streams)]
        t0 = time.monotonic()
        for s, raw in zip(streams, raws):
            s.writer.write(raw)
        got = await asyncio.gather(*(s.answer() for s in streams))
        wall = time.monotonic() - t0
    finally:
        for s in streams:
            s.writer.close()
    return (sum(k for _, k, _ in got) / wall, [f - t0 for f, _, _ in got if f is not None],
            [a - t0 for _, _, a in got if a is not None])


# ---- the run --------------------------------------------------------------------------------

def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(len(values) * q))] * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", default="1,16,64")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--prefill-ms", type=float, default=100.0)
    ap.add_argument("--step-ms", type=float, default=50.0)
    ap.add_argument("--stand-in", type=int, metavar="PORT", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.stand_in:
        stand_in(a.stand_in, a.prefill_ms / 1e3, a.step_ms / 1e3)
        return
    levels = [int(x) for x in a.levels.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="front-door-burst-"))
    (tmp / "keys").write_text(f"gateway:{TOKEN}\n")
    eport, gport, aport = free_port(), free_port(), free_port()
    procs = [spawn([sys.executable, __file__, "--stand-in", str(eport), "--prefill-ms", str(a.prefill_ms),
                    "--step-ms", str(a.step_ms)], tmp / "stand-in.log", f"http://127.0.0.1:{eport}/health", "stand-in",
                   120)]
    gw = {"port": gport, "internal_token_file": str(tmp / "keys"), "queue_depth": 4 * max(levels),
          "engines": [{"name": "chat-0", "models": [MODEL], "url": f"http://127.0.0.1:{eport}"}]}
    (tmp / "gateway.yaml").write_text(yaml.safe_dump(gw))
    from aiboxctl.access.keys import KeyLimits, KeyStore

    # Limits that never refuse here but are all checked (and tokens reserved and settled).
    key = KeyStore(tmp / "access/keys.json").add("bench", KeyLimits(rpm=10**6, tokens_per_day=10**12,
                                                                    concurrency=10**4), now=time.time()).secret
    (tmp / "gateway-access.yaml").write_text(yaml.safe_dump({**gw, "port": aport, "access_dir": "access"}))
    try:
        procs.append(start(["gateway", "--config", str(tmp / "gateway.yaml")], tmp / "gateway.log",
                           f"http://127.0.0.1:{gport}/health"))
        procs.append(start(["gateway", "--config", str(tmp / "gateway-access.yaml")], tmp / "gateway-access.log",
                           f"http://127.0.0.1:{aport}/health"))
        sides = [("direct", f"http://127.0.0.1:{eport}", TOKEN), ("gateway", f"http://127.0.0.1:{gport}", TOKEN),
                 ("access", f"http://127.0.0.1:{aport}", key)]
        print(f"engine stand-in: prefill {a.prefill_ms:g} ms, a token every {a.step_ms:g} ms, {a.tokens} tokens per "
              f"stream; {a.rounds} rounds per level, sides rotated; forwarding and TTFT over every request of every round")
        print(f"{'streams':>7} {'side':>8} {'fwd p50 ms':>10} {'fwd max ms':>10} {'TTFT p50 ms':>11} {'TTFT p90 ms':>11} "
              f"{'tok/s':>8} {'added ms':>8}")
        for n in levels:
            fwd: dict[str, list[float]] = {s[0]: [] for s in sides}
            ttft: dict[str, list[float]] = {s[0]: [] for s in sides}
            rate: dict[str, list[float]] = {s[0]: [] for s in sides}
            for r in range(a.rounds):
                for name, base, k in sides[r % len(sides):] + sides[:r % len(sides)]:
                    tok_s, t, f = asyncio.run(burst(base, k, n, a.tokens))
                    rate[name].append(tok_s)
                    ttft[name].extend(t)
                    fwd[name].extend(f)
            p50 = {name: statistics.median(v) * 1e3 for name, v in ttft.items()}
            against = {"direct": None, "gateway": "direct", "access": "gateway"}
            for name, _, _ in sides:
                added = f"{p50[name] - p50[against[name]]:+8.1f}" if against[name] else f"{'':>8}"
                print(f"{n:>7} {name:>8} {pct(fwd[name], 0.5):>10.1f} {max(fwd[name]) * 1e3:>10.1f} {p50[name]:>11.1f} "
                      f"{pct(ttft[name], 0.9):>11.1f} {statistics.median(rate[name]):>8.1f} {added}", flush=True)
            print(f"{'':>7} (load average {os.getloadavg()[0]:.1f})", flush=True)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(60)


if __name__ == "__main__":
    main()
