"""Prometheus metrics of one engine (prometheus_client, a registry per server).

Gauges that describe the scheduler's state (queue depth, busy slots, KV cells) are read at
scrape time, so the decode loop pays nothing for them; so are the decode loop's own timings
(``aibox_engine_*``: steps, the seconds they took, inside ``llama_decode``, inside the samplers,
and the host's overhead, the rest). Other counters and histograms are updated once per token or
per request.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiboxctl.engine.request import Request
    from aiboxctl.engine.scheduler import Scheduler

_TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
_TPOT_BUCKETS = (0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0)


class EngineMetrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        self.requests = Counter("aibox_requests", "API requests by endpoint and HTTP status",
                                ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("aibox_prompt_tokens", "Prompt tokens of finished requests", registry=r)
        self.generated_tokens = Counter("aibox_generated_tokens", "Generated tokens", registry=r)
        self.prefix_reused_tokens = Counter("aibox_prefix_reused_tokens",
                                            "Prompt tokens served from a slot's cached prefix", registry=r)
        self.ttft = Histogram("aibox_time_to_first_token_seconds", "Time from arrival to the first token",
                              buckets=_TTFT_BUCKETS, registry=r)
        self.tpot = _StepHistogram("aibox_time_per_output_token_seconds",
                                   "Time between successive tokens of a request", _TPOT_BUCKETS)
        r.register(self.tpot)
        self.queue_depth = Gauge("aibox_queue_depth", "Requests waiting for a slot", registry=r)
        self.slots_busy = Gauge("aibox_slots_busy", "Slots generating or prefilling", registry=r)
        self.slots_total = Gauge("aibox_slots_total", "Slots (parallel sequences)", registry=r)
        self.kv_cells_used = Gauge("aibox_kv_cells_used", "KV cache cells holding tokens", registry=r)
        self.kv_cells_total = Gauge("aibox_kv_cells_total", "KV cache cells (n_ctx)", registry=r)
        self.ready = Gauge("aibox_ready", "1 when the model is loaded and the self-test passed", registry=r)

    def bind(self, scheduler: "Scheduler", n_ctx: int) -> None:
        self.registry.register(_StepCollector(scheduler))
        self.queue_depth.set_function(lambda: scheduler.queue_depth)
        self.slots_busy.set_function(lambda: scheduler.busy_slots)
        self.kv_cells_used.set_function(lambda: scheduler.kv_cells_used)
        self.slots_total.set(scheduler.parallel)
        self.kv_cells_total.set(n_ctx)
        self.ready.set(1)

    # called from the decode loop
    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def token_latencies(self, seconds: list[float]) -> None:
        """One step's gaps between successive tokens, one per request that generated."""
        self.tpot.observe_many(seconds)

    def prefix_reused(self, n: int) -> None:
        self.prefix_reused_tokens.inc(n)

    def finished(self, req: "Request") -> None:
        self.prompt_tokens.inc(req.prompt_tokens)
        self.generated_tokens.inc(req.completion_tokens)

    # called from the HTTP side
    def count(self, endpoint: str, status: int) -> None:
        self.requests.labels(endpoint, str(status)).inc()

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _StepCollector:
    """The decode loop's :class:`~aiboxctl.engine.scheduler.StepTiming`, read at scrape time."""

    def __init__(self, scheduler: "Scheduler") -> None:
        self.scheduler = scheduler

    def collect(self) -> Iterator[Any]:  # prometheus_client's collector protocol
        from prometheus_client.core import CounterMetricFamily

        t = self.scheduler.timing  # one consistent snapshot
        for name, doc, value in (
                ("aibox_engine_steps", "Decode steps (one llama_decode each)", t.steps),
                ("aibox_engine_step_seconds", "Wall time of the decode steps", t.step_ns / 1e9),
                ("aibox_engine_decode_seconds", "Time inside llama_decode", t.decode_ns / 1e9),
                ("aibox_engine_sample_seconds", "Time inside the samplers (argmax, sampler chains, grammars)",
                 t.sample_ns / 1e9),
                ("aibox_engine_host_seconds", "Host overhead: step time outside llama_decode and the samplers "
                 "(batch building, bookkeeping, detokenisation, stop and parser work, event hand-off)",
                 t.host_ns / 1e9),
                ("aibox_engine_batch_tokens", "Tokens fed to llama_decode (prompt chunks and generated tokens)",
                 t.batch_tokens),
                ("aibox_engine_sampled_tokens", "Tokens sampled by the decode steps", t.sampled)):
            yield CounterMetricFamily(name, doc, value=value)


class _StepHistogram:
    """A Prometheus histogram the decode loop fills a step at a time: a bisect and an add per
    value (prometheus_client's ``Histogram.observe`` takes a lock and walks every bucket for each
    one, several times the rest of a token's host work). Only the loop writes; a scrape copies the
    counts whole, so its buckets always agree with its count."""

    def __init__(self, name: str, doc: str, buckets: tuple[float, ...]) -> None:
        self.name, self.doc = name, doc
        self.bounds = list(buckets)
        self.counts = [0] * (len(buckets) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe_many(self, values: list[float]) -> None:
        counts, bounds = self.counts, self.bounds
        for v in values:
            counts[bisect_left(bounds, v)] += 1  # a bucket's bound is inclusive (le)
        self.sum += sum(values)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import HistogramMetricFamily

        counts = list(self.counts)
        cumulative, total = [], 0
        for bound, n in zip([*map(str, self.bounds), "+Inf"], counts):
            total += n
            cumulative.append((bound, total))
        yield HistogramMetricFamily(self.name, self.doc, buckets=cumulative, sum_value=self.sum)
