"""Benchmark the running service: TTFT, prefill and decode speed of one stream, aggregate decode
speed at N concurrent streams, each compared with the plan's predicted figure (ratio)."""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass
from typing import Any

from aiboxctl.client.api import ChatOutcome, Endpoint, chat_once, fallback_note, health

# A prompt long enough that prefill is measurable (~300 tokens), and a task that makes the model
# write until max_tokens rather than stop after a line.
_FILLER = ("The appliance serves a private language model to the staff of a small office. "
           "It keeps every document on the premises, answers questions about policies, drafts "
           "letters and summarises long reports. ")
_FILLER_TOKENS = 40  # about, for the usual tokenizers


def prefill_prompt(tokens: int) -> str:
    return _FILLER * max(1, round(tokens / _FILLER_TOKENS)) + "\nWrite a long, detailed story about this office."
DECODE_PROMPT = "Write a long, detailed story about a lighthouse keeper, in many paragraphs."


@dataclass(frozen=True)
class BenchResult:
    endpoint: str
    model: str | None
    runs: int
    concurrency: int
    max_tokens: int
    prompt_tokens: int
    ttft_s: float
    prefill_tok_s: float | None
    decode_tok_s: float | None
    aggregate_tok_s: float
    per_stream_tok_s: float
    completion_tokens_concurrent: int
    predicted: dict[str, Any]
    ratio: dict[str, float | None]
    fallback: str | None = None  # the self-test fallback the engine runs (/health), None: as planned
    notes: tuple[str, ...] = ()
    predicted_for: str = "plan"  # "plan", or "fallback <name>": the prediction re-estimated for what runs


def _predicted_value(predicted: dict[str, Any], *names: str) -> float | None:
    for name in names:
        value = predicted.get(name)
        if isinstance(value, (int, float)) and value > 0:
            return float(value)
    return None


def _ratio(measured: float | None, predicted: float | None) -> float | None:
    if measured is None or predicted is None:
        return None
    return measured / predicted


def run_bench(endpoint: Endpoint, *, concurrency: int, max_tokens: int = 64, runs: int = 2,
              prompt_tokens: int = 320, predicted: dict[str, Any] | None = None,
              served: dict[str, Any] | None = None) -> BenchResult:
    """``served``: the install's record of a self-test fallback (the manifest's ``served``): when
    the engine runs that fallback, the ratios are to its re-estimated prediction."""
    predicted = dict(predicted or {})
    # A ratio means something only next to what runs: a self-test fallback (repack off after an
    # AMX fault) is said beside the figures, not left to be read as a wrong prediction.
    _, body = health(endpoint)
    note = fallback_note(body)
    notes = [note] if note else []
    predicted_for = "plan"
    served = served or {}
    if body.get("fallback"):
        if served.get("fallback") == body["fallback"] and served.get("predicted"):
            predicted, predicted_for = dict(served["predicted"]), f"fallback {body['fallback']}"
            notes.append(f"ratios are to the prediction re-estimated for the fallback '{body['fallback']}' "
                         f"({served.get('basis', '')})")
        else:
            notes.append(f"ratios are to the plan's prediction for the planned settings: no re-estimate for "
                         f"'{body['fallback']}' ({served.get('error') or 'none recorded by install'})")
    # Warm-up: the first request pays for page faults of the weights and the graph build.
    chat_once(endpoint, [{"role": "user", "content": "Hello"}], max_tokens=4, temperature=0.0)

    singles: list[ChatOutcome] = []
    for _ in range(max(1, runs)):
        singles.append(chat_once(endpoint, [{"role": "user", "content": prefill_prompt(prompt_tokens)}],
                                 max_tokens=max_tokens, temperature=0.0))
    ttft = statistics.median(o.timings.get("ttft_s", 0.0) for o in singles)
    prompt_tokens = int(singles[-1].usage.get("prompt_tokens") or 0)
    prefill = prompt_tokens / ttft if prompt_tokens and ttft > 0 else None
    decodes = [o.timings["decode_tok_s"] for o in singles if "decode_tok_s" in o.timings]
    decode = statistics.median(decodes) if decodes else None

    outcomes: list[ChatOutcome | BaseException] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        try:
            o = chat_once(endpoint, [{"role": "user", "content": f"{DECODE_PROMPT} (story {i + 1})"}],
                          max_tokens=max_tokens, temperature=0.0)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            o = exc
        with lock:
            outcomes.append(o)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(max(1, concurrency))]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    if errors:
        raise errors[0]
    tokens = sum(int(o.usage.get("completion_tokens") or o.chunks) for o in outcomes)  # type: ignore[union-attr]
    aggregate = tokens / wall if wall > 0 else 0.0

    p_decode = _predicted_value(predicted, "decode_tok_s", "decode_tok_s_single", "single_stream_decode_tok_s")
    p_prefill = _predicted_value(predicted, "prefill_tok_s")
    p_agg = _predicted_value(predicted, "aggregate_tok_s", "aggregate_decode_tok_s", "total_decode_tok_s")
    return BenchResult(
        endpoint=endpoint.url, model=endpoint.model, runs=len(singles), concurrency=len(threads),
        max_tokens=max_tokens, prompt_tokens=prompt_tokens, ttft_s=ttft, prefill_tok_s=prefill,
        decode_tok_s=decode, aggregate_tok_s=aggregate, per_stream_tok_s=aggregate / len(threads),
        completion_tokens_concurrent=tokens, predicted=predicted,
        ratio={"decode": _ratio(decode, p_decode), "prefill": _ratio(prefill, p_prefill),
               "aggregate": _ratio(aggregate, p_agg)},
        fallback=body.get("fallback"), notes=tuple(notes), predicted_for=predicted_for,
    )
