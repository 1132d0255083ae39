"""Pick the parts of a long document that matter for a question (the chat page, issue 17).

``POST /v1/aibox/docpick`` takes a document's extracted text, the question and a token budget;
it cuts the text into chunks along paragraphs and sentences (Chinese and Western punctuation),
scores every chunk against the question with the box's reranker (or, without one, by cosine
between the embedding model's vectors), and returns the best chunks that fit the budget, in the
document's order. The models are reached through the front door's own pools, so the request
waits in their queues like any other and a busy engine answers 429; with governed access each
engine call is the caller's own request to that model (scope, limits, ledger row, audit record,
503 when it cannot be recorded: app.py's ``admit_inner``), so a pick of N batches is N requests.

    {"text": "...", "question": "...", "budget_tokens": 1500}
 →  {"method": "rerank", "model": "bge-reranker-v2-m3", "chunks_total": 40, "picked": 5,
     "chunks": [{"index": 3, "text": "...", "score": 0.93}, ...], "tokens": 1420}

A box without an embedding or rerank model answers 409 ``no_retrieval_model``: the page then
keeps the start of the document and says that it did. Nothing is stored.
"""

# No `from __future__ import annotations`: FastAPI reads the route function's annotations (Request).

import json
import math
import re
from dataclasses import asdict, dataclass
from typing import Any, Awaitable, Callable

CHUNK_TOKENS = 160  # one chunk: a few sentences; with the question it stays inside a 512-token encoder
MAX_CHUNKS = 2000  # 400,000 characters (the extract limit) in chunks of ~200
BATCH = 64  # documents per rerank / inputs per embeddings request
_CJK = re.compile(r"[\u3000-\u9fff\uff00-\uffef]")
# A sentence ends after 。！？；!? (and closing quotes), or after . followed by a space.
_SENTENCE_END = re.compile(r"(?<=[。！？；!?])[”’」』）)]*\s*|(?<=[.;])\s+")


class DocPickError(Exception):
    def __init__(self, status: int, code: str, message: str, param: str | None = None,
                 type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param, self.type = status, code, message, param, type_

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def estimate_tokens(text: str) -> int:
    """The page's own estimate (web/src/main.js), which errs high: a CJK character ~1.5 tokens,
    other text ~3.5 characters per token."""
    cjk = len(_CJK.findall(text))
    return math.ceil(cjk * 1.5 + (len(text) - cjk) / 3.5)


def sentences(paragraph: str) -> list[str]:
    return [s for s in (p.strip() for p in _SENTENCE_END.split(paragraph)) if s]


def _hard_split(sentence: str, limit: int) -> list[str]:
    """A 'sentence' longer than a chunk (a table row, a run without punctuation): cut at spaces
    when there are any, else by characters."""
    out, cur = [], ""
    for piece in re.split(r"(\s+)", sentence) if " " in sentence else list(sentence):
        if cur and estimate_tokens(cur + piece) > limit:
            out.append(cur.strip())
            cur = piece.lstrip()
        else:
            cur += piece
        while estimate_tokens(cur) > limit:  # one piece alone is too long
            n = max(1, len(cur) // 2)
            while n > 1 and estimate_tokens(cur[:n]) > limit:
                n //= 2
            out.append(cur[:n])
            cur = cur[n:]
    if cur.strip():
        out.append(cur.strip())
    return out


def chunk_text(text: str, limit: int = CHUNK_TOKENS) -> list[str]:
    """Chunks of at most ``limit`` estimated tokens: a paragraph stays whole when it fits,
    else it is cut between sentences; short paragraphs are joined with their neighbours."""
    chunks: list[str] = []
    cur = ""
    for para in (p.strip() for p in re.split(r"\n+", text.replace("\r\n", "\n"))):
        if not para:
            continue
        pieces = [para] if estimate_tokens(para) <= limit else \
            [p for s in sentences(para) for p in ([s] if estimate_tokens(s) <= limit else _hard_split(s, limit))]
        for piece in pieces:
            joined = f"{cur}\n{piece}" if cur else piece
            if cur and estimate_tokens(joined) > limit:
                chunks.append(cur)
                cur = piece
            else:
                cur = joined
    if cur:
        chunks.append(cur)
    return chunks


@dataclass(frozen=True)
class Picked:
    index: int
    text: str
    score: float


@dataclass(frozen=True)
class PickResult:
    method: str  # rerank | embedding
    model: str
    chunks_total: int
    picked: int
    tokens: int  # estimated, of the chunks returned
    chunks: tuple[Picked, ...]


def chunk_limit(budget: int) -> int:
    return max(32, min(CHUNK_TOKENS, budget // 3))


def select(chunks: list[str], scores: list[float], budget: int) -> tuple[Picked, ...]:
    """The best-scoring chunks whose estimated tokens fit ``budget`` (a chunk that does not fit
    is skipped, a smaller later one may), returned in the document's order."""
    taken, used = [], 0
    for i in sorted(range(len(chunks)), key=lambda i: -scores[i]):
        cost = estimate_tokens(chunks[i]) + 1
        if used + cost <= budget:
            taken.append(i)
            used += cost
    return tuple(Picked(i, chunks[i], round(scores[i], 6)) for i in sorted(taken))


# (path, JSON body, pool name) -> the engine's JSON answer; raises DocPickError
Call = Callable[[str, dict, str], Awaitable[dict]]


async def pick(text: str, question: str, budget: int, pools: dict[str, str], call: Call) -> PickResult:
    """``pools``: role -> model name of the box's rerank and embedding models. A small budget
    takes smaller chunks (a third of it, at least 32 tokens), so that a few of them fit."""
    chunks = chunk_text(text, chunk_limit(budget))
    if len(chunks) > MAX_CHUNKS:
        raise DocPickError(413, "document_too_long", f"the document has {len(chunks)} parts; at most {MAX_CHUNKS} "
                           "can be searched", "text")
    if "rerank" in pools:
        model, scores = pools["rerank"], [0.0] * len(chunks)
        for start in range(0, len(chunks), BATCH):
            batch = chunks[start:start + BATCH]
            answer = await call("/v1/rerank", {"model": model, "query": question, "documents": batch,
                                               "return_documents": False, "truncate": True}, model)
            for r in answer.get("results") or []:
                scores[start + int(r["index"])] = float(r["relevance_score"])
        method = "rerank"
    elif "embedding" in pools:
        model, vectors = pools["embedding"], []
        inputs = [question, *chunks]
        for start in range(0, len(inputs), BATCH):
            answer = await call("/v1/embeddings", {"model": model, "input": inputs[start:start + BATCH],
                                                   "truncate": True}, model)
            vectors += [d["embedding"] for d in sorted(answer.get("data") or [], key=lambda d: d["index"])]
        q = vectors[0]
        scores = [sum(a * b for a, b in zip(q, v)) for v in vectors[1:]]  # unit vectors: the cosine
        method = "embedding"
    else:
        raise DocPickError(409, "no_retrieval_model", "this box serves no embedding or rerank model to pick the "
                           "relevant parts of a long document with")
    chosen = select(chunks, scores, budget)
    return PickResult(method, model, len(chunks), len(chosen), sum(estimate_tokens(c.text) + 1 for c in chosen), chosen)


def _body(raw: bytes) -> tuple[str, str, int]:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise DocPickError(400, "invalid_json", "the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise DocPickError(400, "invalid_request", "the request body must be a JSON object")
    text, question, budget = data.get("text"), data.get("question"), data.get("budget_tokens")
    if not isinstance(text, str) or not text.strip():
        raise DocPickError(400, "invalid_request", "'text' must be the document's text (a non-empty string)", "text")
    if not isinstance(question, str) or not question.strip():
        raise DocPickError(400, "invalid_request", "'question' must be a non-empty string", "question")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise DocPickError(400, "invalid_request", "'budget_tokens' must be a positive integer", "budget_tokens")
    return text, question, budget


def mount(app: Any, holder: dict, *, guard: Callable[[Any], Awaitable[Any]] | None,
          admit: Callable[[Any, str, dict], Awaitable[Any]] | None = None,
          allows: Callable[[Any, str], Awaitable[bool]] | None = None, max_body_bytes: int) -> None:
    """Add ``POST /v1/aibox/docpick`` to the front door ``app``; ``holder["gw"]`` is its Gateway.
    ``admit`` (app.py's ``admit_inner``): each engine call is admitted and finished as a request
    of the caller's key to that model's route (scope, limits, ledger row, audit, fail closed);
    ``allows`` (the gate's scope check, awaited: a changed key file is read off the event loop):
    which retrieval models the caller's key may use."""
    from fastapi import Request
    from fastapi.responses import JSONResponse

    from aiboxctl.access.gate import NotRecorded
    from aiboxctl.gateway.pool import Refusal
    from aiboxctl.net import read_body_limited

    async def call(request: Any, path: str, body: dict, model: str) -> dict:
        from aiboxctl.gateway.upstream import UpstreamError

        gw = holder["gw"]
        pool = gw.pools[model]
        access = await admit(request, path, body) if admit is not None else None  # Refusal: 401/403/429/503
        status = 499  # recorded unless the call learns better (as the relay does)
        try:
            try:
                replica = await gw.acquire(pool, None)  # queued like any request
            except Refusal as refusal:
                status = refusal.status
                raise
            try:
                r = await replica.client.post(path, json.dumps(body, ensure_ascii=False).encode(),
                                              {"content-type": "application/json"})
            except UpstreamError as exc:
                gw.mark_down(replica, str(exc))
                status = 502
                raise DocPickError(502, "engine_error", f"the {pool.role} model {model!r} did not answer",
                                   type_="server_error") from None
            finally:
                gw.release(replica)
            status = r.status
            if access is not None:
                access.meter.feed(r.body)  # the engine's usage: the ledger row's tokens
        finally:
            if access is not None:
                try:
                    await access.finish(status)  # once; the ledger row fsynced before anything is answered
                except NotRecorded as exc:
                    raise DocPickError(503, "recording_unavailable", f"the pick could not be recorded: {exc}",
                                       type_="server_error") from None
        if r.status != 200:
            try:
                message = r.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = f"HTTP {r.status}"
            raise DocPickError(502 if r.status >= 500 else r.status, "engine_error",
                               f"the {pool.role} model {model!r} refused: {message}")
        return r.json()

    @app.post("/v1/aibox/docpick")
    async def docpick(request: Request) -> Any:
        if guard is not None:
            denied = await guard(request)
            if denied is not None:
                return denied
        try:
            raw = await read_body_limited(request, max_body_bytes, too_large=DocPickError(
                413, "request_too_large", f"the document is larger than the front door's limit of {max_body_bytes} bytes"))
            text, question, budget = _body(raw)
            up = [p for p in holder["gw"].pools.values()
                  if p.role in ("rerank", "embedding") and any(r.healthy for r in p.replicas)]
            # the models the key may use; when it may use none, the first is asked and its refusal
            # (403 naming the model, recorded) is the answer
            usable = [p for p in up if allows is None or await allows(request, p.name)] or up
            pools: dict[str, str] = {}
            for p in usable:
                pools.setdefault(p.role, p.name)
            result = await pick(text, question, budget, pools,
                                lambda path, body, model: call(request, path, body, model))
        except DocPickError as exc:
            return JSONResponse(exc.body(), status_code=exc.status)
        except Refusal as refusal:
            return JSONResponse(refusal.body(), status_code=refusal.status, headers=refusal.headers())
        return JSONResponse(asdict(result), headers={"Cache-Control": "no-store"})
