"""The decode loop times itself: /metrics carries its steps, the seconds they took, the part
inside llama_decode, the part inside the samplers and the host's overhead (the rest), and the
tokens it fed and sampled. Driven on the real Scheduler over the real runtime (SmolLM2) in
process; the figures are checked for consistency, never for speed."""

from __future__ import annotations

import queue
import time

import pytest

from aiboxctl.engine.metrics import EngineMetrics
from aiboxctl.engine.request import Request, SamplingParams
from aiboxctl.engine.scheduler import Scheduler
from test_engine_support import smollm2_path

EVENT_TIMEOUT_S = 120  # a hang guard only, never a timing assertion
STEP_FAMILIES = ("aibox_engine_steps", "aibox_engine_step_seconds", "aibox_engine_decode_seconds",
                 "aibox_engine_sample_seconds", "aibox_engine_host_seconds", "aibox_engine_batch_tokens",
                 "aibox_engine_sampled_tokens")


@pytest.fixture(scope="module")
def runtime():
    """SmolLM2 with the configuration the self-test proves on this CPU."""
    from aiboxctl.engine.config import EngineConfig
    from aiboxctl.engine.llama import LlamaRuntime
    from aiboxctl.engine.selftest import run_selftest

    proven = run_selftest(EngineConfig(model=smollm2_path(), n_ctx=1024, parallel=3, threads=1,
                                       flash_attn="off", kv_unified=False))
    assert proven.ok, proven.fallback_reason
    rt = LlamaRuntime(proven.config)
    yield rt
    rt.close()


def scrape(metrics: EngineMetrics) -> dict[str, float]:
    """Every sample of /metrics' text by name, through Prometheus' own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    body, _ = metrics.render()
    return {s.name: s.value for f in text_string_to_metric_families(body.decode()) for s in f.samples
            if not s.labels}


def finish(events: queue.Queue) -> tuple:
    while True:
        ev = events.get(timeout=EVENT_TIMEOUT_S)
        if ev[0] in ("done", "error"):
            return ev


def test_step_counters_exist_and_add_up(runtime):
    metrics = EngineMetrics()
    sched = Scheduler(runtime, parallel=3, n_batch=512, slot_ctx=340, queue_size=4, metrics=metrics)
    metrics.bind(sched, runtime.n_ctx)
    before = scrape(metrics)
    assert all(before[f"{name}_total"] == 0 for name in STEP_FAMILIES)
    started = time.perf_counter()
    sched.start()
    try:
        # one request of each sampling path: argmax, a sampler chain, a grammar; together in the batch
        params = [SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True),
                  SamplingParams(max_tokens=9, temperature=0.8, seed=3, ignore_eos=True),
                  SamplingParams(max_tokens=7, temperature=0.0, grammar='root ::= "yes" | "no"')]
        reqs, queues = [], []
        for i, p in enumerate(params):
            q: queue.Queue = queue.Queue()
            prompt = runtime.tokenize(f"Question {i}: is the sky blue? Answer:", add_special=True)
            reqs.append(Request(f"r{i}", prompt, p, q.put))
            queues.append(q)
            sched.submit(reqs[-1])
        ends = [finish(q) for q in queues]
    finally:
        assert sched.stop(timeout=30)
        sched.close()
    ran = time.perf_counter() - started  # a bound on what the counters may hold, not a speed check
    assert [e[0] for e in ends] == ["done"] * 3, ends
    got = scrape(metrics)
    completion = sum(r.completion_tokens for r in reqs)
    assert completion >= 12 + 9 + 1
    # every sampled token is counted once, and they are the generated tokens /metrics reports
    assert got["aibox_engine_sampled_tokens_total"] == completion == got["aibox_generated_tokens_total"]
    # fed: each whole prompt (a fresh scheduler reuses no prefix), and each sampled token but the last
    assert got["aibox_engine_batch_tokens_total"] == sum(len(r.prompt) + r.completion_tokens - 1 for r in reqs)
    assert got["aibox_engine_steps_total"] >= 12  # one step per token of the longest reply at least
    step, decode, sample, host = (got[f"aibox_engine_{k}_seconds_total"] for k in ("step", "decode", "sample", "host"))
    assert decode > 0 and sample > 0 and host > 0
    assert decode + sample <= step
    assert host + decode + sample == pytest.approx(step, rel=1e-6)  # host is the remainder by definition
    # ...so the step clock itself is held to the wall time the loop ran (seconds, not ms or µs)
    assert step <= ran



def _submit(sched: Scheduler, runtime, prompts: list[str], params: list[SamplingParams]) -> tuple[list, list]:
    """(requests, their event queues), submitted."""
    reqs, queues = [], []
    for i, (text, p) in enumerate(zip(prompts, params)):
        q: queue.Queue = queue.Queue()
        reqs.append(Request(f"g{i}", runtime.tokenize(text, add_special=True), p, q.put))
        queues.append(q)
        sched.submit(reqs[-1])
    return reqs, queues


def _events(q: queue.Queue) -> list:
    got: list = []
    while not got or got[-1][0] not in ("done", "error"):
        got.append(q.get(timeout=EVENT_TIMEOUT_S))
    return got


def _text(events: list) -> str:
    return "".join(e[1] for e in events if e[0] == "text")


def test_batched_greedy_rows_are_each_requests_own(runtime):
    """Plain greedy slots decoding together take one argmax over the step's logits rows and read
    their logprobs from the same rows (Slot.out_row): each request's reply and log-probabilities
    must be its own, as when it runs alone. Distinct prompts, so a row mix-up changes the text.
    The per-step histogram of the gaps between tokens counts one gap per token after the first."""
    prompts = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a land"]
    params = [SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True, logprobs=2 if i == 0 else None)
              for i in range(3)]
    alone_sched = Scheduler(runtime, parallel=3, n_batch=512, slot_ctx=340, queue_size=4)
    alone_sched.start()
    try:
        alone = [_events(_submit(alone_sched, runtime, [t], [p])[1][0]) for t, p in zip(prompts, params)]
    finally:
        assert alone_sched.stop(timeout=30)
        alone_sched.close()
    metrics = EngineMetrics()
    sched = Scheduler(runtime, parallel=3, n_batch=512, slot_ctx=340, queue_size=4, metrics=metrics)
    metrics.bind(sched, runtime.n_ctx)
    reqs, queues = _submit(sched, runtime, prompts, params)  # before the loop runs: admitted together
    sched.start()
    try:
        together = [_events(q) for q in queues]
    finally:
        assert sched.stop(timeout=30)
        sched.close()
    assert [e[-1][0] for e in together] == ["done"] * 3, together
    assert [_text(e) for e in together] == [_text(e) for e in alone]
    assert len({_text(e) for e in together}) == 3
    lps = [e[1] for e in together[0] if e[0] == "logprobs"]
    assert len(lps) == 10
    for piece, lp, top in lps:  # greedy: the token written is its row's most likely one
        assert top[0] == (piece, lp)
    assert [lp for _, lp, _ in lps] == pytest.approx([e[1][1] for e in alone[0] if e[0] == "logprobs"], abs=1e-3)
    assert b"".join(p for p, _, _ in lps).decode() == _text(together[0])
    got = scrape(metrics)
    assert got["aibox_time_per_output_token_seconds_count"] == sum(r.completion_tokens - 1 for r in reqs) == 27
