"""A hung engine must not hang the client or hold its slot: the streams in flight on a replica the
health poller ejects as hung (its checks timed out, nothing relayed meanwhile) are ended — a
begun SSE stream at once, with a final ``engine_unresponsive`` error event; an answer that has sent
nothing yet (it may be a busy engine's long one) after as many more timed-out checks, with a 502
JSON error — recorded as 502 (metrics, and the usage ledger with governed access, the key's
reservation freed), and the slot released; ``stream_idle_timeout_s`` does the same for one stream
silent that long, and leaves non-stream answers alone.

A real SmolLM2 engine behind a real ``aiboxctl gateway`` child, hung with SIGSTOP. The clients
have a read timeout, so the old behaviour (wait forever) fails instead of hanging the suite; no
timing is asserted."""

from __future__ import annotations

import json
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from aiboxctl.access.keys import KeyLimits, KeyStore
from aiboxctl.access.ledger import iter_records
from aiboxctl.errors import AiboxError
from aiboxctl.gateway.config import gateway_config_from_text
from test_engine_support import one_thread_smollm2, wait_until
from test_gateway_health import _gateway_child, _replica_state

CHAT = "/v1/chat/completions"
# Far longer than the ejection or the idle timeout take here: a client still waiting then is the hang.
CLIENT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)


def _ask(max_tokens: int, **extra) -> dict:
    return {"model": "smollm2", "messages": [{"role": "user", "content": "Count from 1 to 500."}],
            "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, **extra}


@pytest.fixture(scope="module")
def smollm2_engine(tmp_path_factory):
    with one_thread_smollm2(tmp_path_factory.mktemp("hung-engine"), n_ctx=2048, max_tokens_cap=512) as server:
        yield server


def _events_until_stop(c: httpx.Client, body: dict, proc) -> list[str]:
    """A stream's ``data:`` payloads: SIGSTOP the engine after the first one, then read to the end."""
    events = []
    with c.stream("POST", CHAT, json=body) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                if len(events) == 1:
                    proc.send_signal(signal.SIGSTOP)
    return events


def _error_event(events: list[str]) -> dict:
    assert len(events) >= 2 and events[-1] != "[DONE]", events[-3:]
    err = json.loads(events[-1])["error"]
    assert err["code"] == "engine_unresponsive" and err["type"] == "server_error", err
    return err


def _counter(metrics: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _slots_taken(base: str, admin_key: str) -> int:
    """Requests holding a slot at the front door (the admin view's in_flight)."""
    r = httpx.get(base + "/v1/aibox/admin", headers={"Authorization": f"Bearer {admin_key}"}, timeout=10)
    return r.json()["in_flight"]


def test_an_ejected_hung_replica_ends_its_streams_frees_the_slot_and_records_502(smollm2_engine, tmp_path):
    proc = smollm2_engine.proc
    store = KeyStore(tmp_path / "access/keys.json")
    user = store.add("u", KeyLimits(concurrency=2), now=time.time()).secret
    ops = store.add("ops", KeyLimits(admin=True), now=time.time()).secret
    with _gateway_child(tmp_path, [{"name": "chat-0", "models": ["smollm2"], "url": smollm2_engine.base}],
                        access_dir="access", health_interval_s=0.3, health_timeout_s=0.3, health_failures=2
                        ) as (base, log), \
            httpx.Client(base_url=base, timeout=CLIENT_TIMEOUT, headers={"Authorization": f"Bearer {user}"}) as c, \
            ThreadPoolExecutor(1) as pool:
        try:
            waiting = pool.submit(c.post, CHAT, json=_ask(400))  # a non-stream answer: nothing sent yet
            # it holds its slot before the stream starts (else, on a slow box, it could come after the
            # replica went out and be refused 503 rather than cut)
            assert wait_until(lambda: _slots_taken(base, ops) == 1, timeout=30)
            events = _events_until_stop(c, _ask(400, stream=True), proc)
            err = _error_event(events)
            # the reason at the cut: the second timed-out check in a row (health_failures) took it out
            assert "chat-0" in err["message"] and "timed out 2 times in a row" in err["message"], err
            answer = waiting.result()
            assert answer.status_code == 502, answer.text
            assert answer.json()["error"]["code"] == "engine_unresponsive", answer.text
            # Not at the ejection: an answer that relays nothing until it ends may be a busy engine's
            # long one, so it is ended only after as many more timed-out checks (2 x health_failures).
            assert "timed out 4 times in a row" in answer.json()["error"]["message"], answer.text
            status, down, _ = _replica_state(base, "smollm2", "chat-0")
            # still out, for timed-out checks; each further check counts on (3, 4, … by the time a
            # loaded box reads it), so the count is the error event's above, not this one
            assert status == 503 and re.search(r"timed out \d+ times in a row", down or ""), (status, down)
            metrics = httpx.get(base + "/metrics", headers={"Authorization": f"Bearer {ops}"}, timeout=10).text
            assert _counter(metrics, "aibox_gateway_requests_total", replica="chat-0", status="502") == 2, metrics
            assert _counter(metrics, "aibox_gateway_upstream_errors_total", kind="unresponsive") == 2, metrics
            assert _counter(metrics, "aibox_gateway_in_flight", replica="chat-0") == 0, metrics
            rows = [r for r in iter_records(tmp_path / "access/usage.db") if r.key == "u"]
            assert sorted(r.status for r in rows) == [502, 502], rows
        finally:
            proc.send_signal(signal.SIGCONT)
        assert wait_until(lambda: _replica_state(base, "smollm2", "chat-0") == (200, None, None), timeout=60), \
            log.read_text()[-2000:]
        # The key's two concurrency places were given back: two requests at once are admitted.
        both = [pool.submit(c.post, CHAT, json=_ask(4)) for _ in range(2)]
        assert [r.result().status_code for r in both] == [200, 200], [r.result().text for r in both]


def test_stream_idle_timeout_is_validated():
    text = "engines:\n  - {name: a, models: [x], url: 'http://127.0.0.1:9'}\n"
    assert gateway_config_from_text(text).stream_idle_timeout_s is None  # off by default
    assert gateway_config_from_text(text + "stream_idle_timeout_s: 90\n").stream_idle_timeout_s == 90
    assert gateway_config_from_text(text + "stream_idle_timeout_s: null\n").stream_idle_timeout_s is None
    with pytest.raises(AiboxError) as err:
        gateway_config_from_text(text + "stream_idle_timeout_s: 0\n")
    assert "stream_idle_timeout_s" in str(err.value)


def test_stream_idle_timeout_ends_a_silent_stream_and_leaves_other_answers_alone(smollm2_engine, tmp_path):
    """Health checks time out too, but far fewer than health_failures: the replica stays in, and
    only the idle timeout ends the stream. A non-stream answer waits as long as it takes."""
    proc = smollm2_engine.proc
    with _gateway_child(tmp_path, [{"name": "chat-0", "models": ["smollm2"], "url": smollm2_engine.base}],
                        stream_idle_timeout_s=1.5, health_interval_s=0.5, health_timeout_s=0.5,
                        health_failures=100) as (base, log), \
            httpx.Client(base_url=base, timeout=CLIENT_TIMEOUT) as c, ThreadPoolExecutor(1) as pool:
        try:
            err = _error_event(_events_until_stop(c, _ask(400, stream=True), proc))
            assert "stream_idle_timeout_s" in err["message"], err
            assert _replica_state(base, "smollm2", "chat-0")[:2] == (200, None)  # in: only slow
        finally:
            proc.send_signal(signal.SIGCONT)
        assert wait_until(lambda: _replica_state(base, "smollm2", "chat-0") == (200, None, None), timeout=60)

        proc.send_signal(signal.SIGSTOP)
        try:
            patient = pool.submit(c.post, CHAT, json=_ask(4))  # not a stream: no idle limit
            r = c.post(CHAT, json=_ask(4, stream=True))  # a stream whose head never comes
            assert r.status_code == 502 and r.json()["error"]["code"] == "engine_unresponsive", r.text
        finally:
            proc.send_signal(signal.SIGCONT)
        assert patient.result().status_code == 200, patient.result().text
        metrics = c.get("/metrics").text
        assert _counter(metrics, "aibox_gateway_requests_total", replica="chat-0", status="502") == 2, metrics
        assert _counter(metrics, "aibox_gateway_in_flight", replica="chat-0") == 0, metrics
        assert c.post(CHAT, json=_ask(4, stream=True)).status_code == 200
