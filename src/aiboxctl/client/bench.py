"""Benchmark the running service: TTFT, prefill and decode speed of one stream, aggregate decode
speed at N concurrent streams, each compared with the plan's predicted figure (ratio); and for
each embedding model texts/s and tokens/s, for each reranker the latency of one query over 50
documents, against sizing's prediction for a pooled engine (sizing/pooled_speed.py)."""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from aiboxctl.client.api import ChatOutcome, Endpoint, _client, _raise_for, chat_once, fallback_note, health
from aiboxctl.errors import ServiceDown, UsageError, VerificationFailed

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
    pooled: tuple = ()  # PooledBench of each embedding/rerank model the endpoint serves


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


# --- embedding and rerank engines (issue 15) ---------------------------------------------------

# Passages as a RAG tool embeds them: a few sentences of office text, Chinese and English.
PASSAGES = (
    "Applications for reimbursement must be submitted within thirty days of the expense, with the original "
    "receipts and the approval of the head of department attached.",
    "各科室应于每季度末前将工作总结报送办公室，内容包括主要工作完成情况、存在的问题及下一步工作安排。",
    "Patient records are kept for at least ten years after the last visit and may only be consulted by staff "
    "directly involved in the patient's care.",
    "本办法所称公务接待，是指出席会议、考察调研、执行任务、学习交流、检查指导、请示汇报工作等公务活动。",
    "The office is closed on public holidays; urgent requests are handled by the duty officer, whose telephone "
    "number is posted at the main entrance.",
    "Loans above the branch's approval limit are referred to the regional credit committee, which meets every "
    "Tuesday and answers within five working days.",
    "档案管理人员应当定期检查档案的保存状况，发现破损、变质的档案及时修复，确保档案完整与安全。",
    "Visitors register at the reception desk, wear the visitor badge at all times and are accompanied by a "
    "member of staff outside the public areas.",
)
RERANK_QUERY = "How long are patient records kept?"


@dataclass(frozen=True)
class PooledBench:
    """One embedding or rerank model's figures, measured and predicted (``predicted`` has
    ``texts_per_s``/``tokens_per_s`` for embeddings, ``latency_s`` for rerank; {} when unknown)."""

    model: str
    role: str  # embedding | rerank
    batch: int  # inputs per request (rerank: documents per query)
    rounds: int
    input_tokens: float  # per input, from the engine's usage
    seconds: float  # median time of one request
    texts_per_s: float
    tokens_per_s: float
    predicted: dict[str, Any]
    ratio: dict[str, float | None]
    notes: tuple[str, ...] = ()

    @property
    def latency_s(self) -> float:
        return self.seconds


@dataclass(frozen=True)
class PooledOnlyResult:
    """``aiboxctl bench`` where no chat model was measured (an embedding/rerank engine alone, or
    ``--role`` without chat)."""

    endpoint: str
    pooled: tuple[PooledBench, ...]
    notes: tuple[str, ...] = ()


def served_models(endpoint: Endpoint, timeout: float = 30.0) -> list[tuple[str, str]]:
    """(model, role) of every model the endpoint serves: the front door's /v1/models names each
    role; a single engine's does not, and its /health does."""
    import httpx

    try:
        with _client(timeout, endpoint.url, endpoint.ca_file, endpoint.pinned) as c:
            r = c.get(f"{endpoint.url}/v1/models", headers=endpoint.headers())
    except httpx.ConnectError as exc:
        raise ServiceDown(f"the service at {endpoint.url} is not answering", hint=endpoint.command("status")) from exc
    _raise_for(r, endpoint)
    data = [m for m in (r.json().get("data") or []) if isinstance(m, dict) and m.get("id")]
    if data and all("role" in m for m in data):
        return [(str(m["id"]), str(m["role"])) for m in data]
    _, body = health(endpoint, timeout)
    role = str(body.get("role") or "chat")
    return [(str(m["id"]), role) for m in data]


def _post(c: Any, endpoint: Endpoint, path: str, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """One timed request on the bench's client ``c`` (its connection kept from the warm-up, so no
    connect or TLS handshake is in the figure)."""
    import httpx

    try:
        t0 = time.perf_counter()
        r = c.post(f"{endpoint.url}{path}", json=body, headers=endpoint.headers())
        took = time.perf_counter() - t0
    except httpx.ConnectError as exc:
        raise ServiceDown(f"the service at {endpoint.url} is not answering", hint=endpoint.command("status")) from exc
    except httpx.HTTPError as exc:
        raise VerificationFailed(f"{path} failed: {type(exc).__name__}: {exc}", code="request_failed",
                                 hint=endpoint.command("status")) from exc
    if r.status_code in (401, 403):
        _raise_for(r, endpoint)
    if r.status_code != 200:
        raise VerificationFailed(f"{path} failed: HTTP {r.status_code} {r.text[:200]}".strip(), code="request_failed",
                                 hint=endpoint.command("status"))
    return took, r.json()


# (role, inputs per request, tokens per input) -> the prediction's figures, or None
Predictor = Callable[[str, int, float], "dict[str, Any] | None"]


def run_pooled_bench(endpoint: Endpoint, model: str, role: str, *, batch: int = 16, documents: int = 50,
                     rounds: int = 3, predict: Predictor | None = None, no_prediction: str | None = None,
                     timeout: float = 600.0) -> PooledBench:
    """Embeddings: ``batch`` passages per request, texts/s and tokens/s. Rerank: one query over
    ``documents`` passages, the request's latency. The median of ``rounds`` after a warm-up.
    ``no_prediction``: the note said beside figures without a prediction (why there is none)."""
    n = max(1, batch if role == "embedding" else documents)
    texts = [PASSAGES[i % len(PASSAGES)] + f" ({i + 1})" for i in range(n)]
    if role == "embedding":
        path, body = "/v1/embeddings", {"model": model, "input": texts}
    elif role == "rerank":
        path, body = "/v1/rerank", {"model": model, "query": RERANK_QUERY, "documents": texts, "return_documents": False}
    else:
        raise UsageError(f"model {model!r} is a {role} model: only embedding and rerank models are measured here")
    times, usage_tokens = [], 0
    with _client(timeout, endpoint.url, endpoint.ca_file, endpoint.pinned) as c:
        # warm-up: the connection, page faults of the weights, the graph build
        _post(c, endpoint, path, {**body, "input": texts[:1]} if role == "embedding" else {**body, "documents": texts[:2]})
        for _ in range(max(1, rounds)):
            took, answer = _post(c, endpoint, path, body)
            times.append(took)
            usage_tokens = int((answer.get("usage") or {}).get("prompt_tokens") or 0)
    seconds = statistics.median(times)
    per_input = usage_tokens / n if usage_tokens else 0.0
    texts_s = n / seconds if seconds > 0 else 0.0
    tokens_s = usage_tokens / seconds if seconds > 0 else 0.0
    predicted = dict((predict(role, n, per_input) if predict and per_input else None) or {})
    notes = [] if predicted else [no_prediction or "no prediction: the engine's configuration is not known here "
                                  "(an installed box, or --engine-config FILE)"]
    if role == "embedding":
        ratio = {"texts_per_s": _ratio(texts_s, _predicted_value(predicted, "texts_per_s")),
                 "tokens_per_s": _ratio(tokens_s, _predicted_value(predicted, "tokens_per_s"))}
    else:  # a latency: predicted over measured, so that above 1 is faster than predicted here too
        p_lat = _predicted_value(predicted, "latency_s")
        ratio = {"latency": (p_lat / seconds) if p_lat and seconds > 0 else None}
    return PooledBench(model, role, n, len(times), round(per_input, 1), seconds, texts_s, tokens_s, predicted,
                       ratio, tuple(notes))
