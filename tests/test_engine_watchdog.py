"""The decode loop never dies silently: one request's failure is that request's alone, a loop
that died or hangs turns /health to 503 and ends `aiboxctl serve` with exit 5 so it is
restarted, and a reply cut by max_tokens never ends in U+FFFD.

The scheduler tests drive the real Scheduler over the real runtime (SmolLM2) in process; the
exit-code tests run real `aiboxctl serve` children with the AIBOX_ENGINE_FAULT test hook."""

from __future__ import annotations

import queue
import threading
import time
import types

import httpx
import pytest

from aiboxctl.engine.request import Request, SamplingParams
from aiboxctl.engine.scheduler import Scheduler
from aiboxctl.engine.slot import Slot, SlotText
from test_engine_support import running_server, smollm2_path, wait_until

CHINESE = "中文：你好，世界！中文：你好，世界！中文：你好，"
EVENT_TIMEOUT_S = 120  # a hang guard only, never a timing assertion


@pytest.fixture(scope="module")
def runtime():
    """SmolLM2 loaded in this process with the configuration the self-test proves (on a CPU
    whose advertised AMX faults that is repack off; elsewhere as configured)."""
    from aiboxctl.engine.config import EngineConfig
    from aiboxctl.engine.llama import LlamaRuntime
    from aiboxctl.engine.selftest import run_selftest

    cfg = EngineConfig(model=smollm2_path(), n_ctx=1024, parallel=2, threads=1, flash_attn="off",
                       kv_unified=False)
    proven = run_selftest(cfg)
    assert proven.ok, proven.fallback_reason
    rt = LlamaRuntime(proven.config)
    yield rt
    rt.close()


@pytest.fixture
def make_scheduler(runtime):
    made: list[Scheduler] = []

    def make(**kwargs) -> Scheduler:
        sched = Scheduler(runtime, parallel=2, n_batch=512, slot_ctx=512, queue_size=4, **kwargs)
        sched.start()
        made.append(sched)
        return sched

    yield make
    for sched in made:
        if sched.stop(timeout=5):
            sched.close()


def submit(sched: Scheduler, rt, text: str, **params) -> queue.Queue:
    events: queue.Queue = queue.Queue()
    req = Request(f"r-{text[:8]}", rt.tokenize(text, add_special=True, parse_special=False),
                  SamplingParams(**{"max_tokens": 8, "temperature": 0.0, **params}), events.put)
    sched.submit(req)
    return events


def outcome(events: queue.Queue) -> tuple[str, str]:
    """("done", text) or ("error", message) once the request ended."""
    parts = []
    while True:
        ev = events.get(timeout=EVENT_TIMEOUT_S)
        if ev[0] == "text":
            parts.append(ev[1])
        elif ev[0] == "done":
            return "done", "".join(parts)
        else:
            return "error", ev[1]


def test_each_penalty_samples_in_the_loop(make_scheduler, runtime):
    sched = make_scheduler()
    for params in ({"repeat_penalty": 1.3}, {"frequency_penalty": 0.5}, {"presence_penalty": -0.5},
                   {"repeat_penalty": 1.1, "temperature": 0.7, "seed": 3}):
        kind, text = outcome(submit(sched, runtime, "Once upon a time", **params))
        assert kind == "done" and text, (params, text)
    assert outcome(submit(sched, runtime, "The capital of France is"))[0] == "done"
    assert sched.problem(stall_s=60) is None


def test_a_failing_sampler_fails_only_its_request(make_scheduler, runtime, monkeypatch):
    sched = make_scheduler()
    real = sched._make_sampler

    def make_sampler(p, prompt):
        if p.seed == 666:
            raise RuntimeError("sampler refused (test seam)")
        return real(p, prompt)

    monkeypatch.setattr(sched, "_make_sampler", make_sampler)
    good = submit(sched, runtime, "Tell me about cats.", max_tokens=16, temperature=0.7, seed=1)
    bad = submit(sched, runtime, "Tell me about dogs.", temperature=0.7, seed=666)
    assert outcome(bad) == ("error", "engine error while starting this request: RuntimeError: "
                                     "sampler refused (test seam)")
    assert outcome(good)[0] == "done"
    assert outcome(submit(sched, runtime, "The capital of France is"))[0] == "done"
    assert sched.busy_slots == 0 and sched.problem(stall_s=60) is None


def test_a_failing_step_for_one_slot_fails_only_its_request(make_scheduler, runtime, monkeypatch):
    sched = make_scheduler()
    real = runtime.piece
    boom = threading.Event()

    def piece(token, *, special=False):
        if threading.current_thread().name == "aibox-decode" and not boom.is_set():
            boom.set()
            raise RuntimeError("detokeniser failed (test seam)")
        return real(token, special=special)

    monkeypatch.setattr(runtime, "piece", piece)
    kind, message = outcome(submit(sched, runtime, "Once upon a time"))
    assert kind == "error" and "while sampling" in message
    monkeypatch.setattr(runtime, "piece", real)
    assert outcome(submit(sched, runtime, "Once upon a time"))[0] == "done"
    assert sched.problem(stall_s=60) is None


@pytest.mark.parametrize("fault", ["loop-crash", "loop-stall"])
def test_dead_or_stuck_loop_is_reported_and_its_requests_answered(make_scheduler, runtime, fault):
    sched = make_scheduler(fault=fault)
    assert sched.problem(stall_s=2) is None
    events = submit(sched, runtime, "Once upon a time")
    if fault == "loop-crash":
        assert outcome(events) == ("error", "engine failure: RuntimeError: injected fault: loop-crash")
        assert wait_until(lambda: sched.problem(stall_s=2) is not None)
        assert "died" in sched.problem(stall_s=2)
    else:
        assert wait_until(lambda: sched.problem(stall_s=2) is not None)
        assert "no progress" in sched.problem(stall_s=2)
        sched.abandon("engine failure: stuck")
        assert outcome(events) == ("error", "engine failure: stuck")


def test_an_idle_loop_is_not_a_stuck_one(make_scheduler, runtime):
    sched = make_scheduler()
    time.sleep(3)  # idle for longer than the stall limit below
    assert sched.problem(stall_s=2) is None


# --- a reply cut by max_tokens ---------------------------------------------------------------

def test_cut_inside_a_character_drops_the_partial_bytes():
    """The scheduler's finish path, driven directly: the cut left 2 of 3 bytes of a character."""
    loop = types.SimpleNamespace(_out=[], metrics=None, _release=lambda s: None)
    slot = Slot(0)
    slot.req = Request("r", [1], SamplingParams(), print)
    slot.text = SlotText()
    sent, _ = slot.text.push("好中".encode()[:5])
    Scheduler._finish(loop, slot, "length")
    texts = [event[1] for _, event in loop._out if event[0] == "text"]
    assert sent + "".join(texts) == "好"


def test_replies_cut_anywhere_in_chinese_are_valid_text(make_scheduler, runtime):
    sched = make_scheduler()
    whole = outcome(submit(sched, runtime, CHINESE, max_tokens=24))[1]
    assert any("\u4e00" <= ch <= "\u9fff" for ch in whole)  # the model really writes Chinese
    for n in range(1, 25):
        kind, text = outcome(submit(sched, runtime, CHINESE, max_tokens=n))
        assert kind == "done" and "\ufffd" not in text, (n, text)
        assert whole.startswith(text)


# --- the process: /health 503 and a non-zero exit, so it gets restarted ------------------------

@pytest.mark.parametrize("fault", ["loop-crash", "loop-stall"])
def test_serve_exits_5_when_the_decode_loop_dies_or_hangs(tmp_path, fault):
    # repack off works on every CPU, so the self-test can be skipped to keep this test short
    config = {"model": smollm2_path(), "n_ctx": 512, "parallel": 2, "threads": 1, "flash_attn": "off",
              "repack": False, "selftest": False, "watchdog_s": 2}
    with running_server(tmp_path, config, env={"AIBOX_ENGINE_FAULT": fault}) as srv:
        assert httpx.get(srv.base + "/health", timeout=10).status_code == 200
        seen: list[httpx.Response] = []
        stop = threading.Event()

        def poll() -> None:
            with httpx.Client(timeout=10) as c:
                while not stop.is_set():
                    try:
                        r = c.get(srv.base + "/health")
                    except httpx.HTTPError:
                        return  # the server has gone
                    if r.status_code != 200:
                        seen.append(r)
                        return
                    time.sleep(0.05)

        poller = threading.Thread(target=poll)
        poller.start()
        r = httpx.post(srv.base + "/v1/completions", json={"prompt": "Hello", "max_tokens": 4}, timeout=120)
        assert r.status_code == 500 and "engine failure" in r.json()["error"]["message"]
        poller.join(120)
        stop.set()
        assert seen and seen[0].status_code == 503, seen
        health = seen[0].json()
        assert health["status"] == "failed" and "decode loop" in health["reason"]
        assert srv.proc.wait(120) == 5
        log = srv.log()
    assert "engine unhealthy" in log
    assert ("died" if fault == "loop-crash" else "no progress") in log
