"""Pooled outputs on llama.cpp's kernels: embedding models and cross-encoder rerankers.

:class:`PooledRuntime` is a :class:`LlamaRuntime` whose context returns one vector per sequence
(``embeddings = true``, pooling from the GGUF or the ``pooling`` setting): mean or CLS for BERT
encoders (non-causal attention comes from the GGUF), last-token for decoder embedders such as
Qwen3-Embedding, rank for rerankers (``llama_get_embeddings_seq`` then holds the classifier's
score). One ``llama_decode`` takes many inputs, one sequence each, up to the context's tokens
(``n_ctx`` = ``n_batch`` = ``n_ubatch``: an encoder needs a whole sequence in one micro-batch)
and ``parallel`` sequences.

:class:`PooledWorker` owns the runtime on one thread and packs the inputs of every waiting
request into those decodes (a request of 64 short texts is one decode; ten requests of one text
each are one decode too), answering each request through a ``concurrent.futures.Future``.
"""

from __future__ import annotations

import ctypes
import logging
import math
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiboxctl.engine.llama import LlamaRuntime, context_params
from aiboxctl.engine.request import QueueFull
from aiboxctl.engine.scheduler import check_fault
from aiboxctl.errors import AiboxError, UsageError

if TYPE_CHECKING:
    from aiboxctl.engine.config import EngineConfig

log = logging.getLogger("aiboxctl.engine")

MAX_SEQ = 256  # llama.cpp's LLAMA_MAX_SEQ: sequences one context can hold


def pooling_names(L: Any) -> dict[int, str]:
    return {L.LLAMA_POOLING_TYPE_NONE: "none", L.LLAMA_POOLING_TYPE_MEAN: "mean", L.LLAMA_POOLING_TYPE_CLS: "cls",
            L.LLAMA_POOLING_TYPE_LAST: "last", L.LLAMA_POOLING_TYPE_RANK: "rank"}


class PooledRuntime(LlamaRuntime):
    """A model loaded for one pooled vector (or rank score) per input sequence."""

    def __init__(self, config: "EngineConfig") -> None:
        super().__init__(config)
        L = self.lib
        try:
            self.pooling = pooling_names(L).get(int(L.llama_pooling_type(self.ctx)), "none")
            want = "rank" if config.role == "rerank" else None
            if self.pooling == "none":
                raise UsageError(f"{config.model} has no pooling type in its GGUF; set 'pooling' "
                                 "(mean, cls or last) in the engine config")
            if want == "rank" and self.pooling != "rank":
                raise UsageError(f"{config.model} is not a reranker (pooling {self.pooling}, no "
                                 "classification head); serve it with role: embedding")
            if config.role == "embedding" and self.pooling == "rank":
                raise UsageError(f"{config.model} is a reranker (rank pooling); serve it with role: rerank")
            self.n_out = int(L.llama_model_n_cls_out(self.model)) if self.pooling == "rank" \
                else int(L.llama_model_n_embd_out(self.model))
            self.n_ctx_train = int(L.llama_model_n_ctx_train(self.model))
            self.max_input = min(self.n_ctx, self.n_ctx_train) if self.n_ctx_train > 0 else self.n_ctx
            self.n_seq_max = int(L.llama_n_seq_max(self.ctx))
            self.add_eos = bool(L.llama_vocab_get_add_eos(self.vocab))
            self.add_sep = bool(L.llama_vocab_get_add_sep(self.vocab))
            self._batch = L.llama_batch_init(self.n_ctx, 0, 1)
        except Exception:
            self.close()
            raise

    def _context_params(self, config: "EngineConfig", L: Any) -> Any:
        c = context_params(config, L)
        c.embeddings = True
        c.pooling_type = {"auto": L.LLAMA_POOLING_TYPE_UNSPECIFIED, "mean": L.LLAMA_POOLING_TYPE_MEAN,
                          "cls": L.LLAMA_POOLING_TYPE_CLS, "last": L.LLAMA_POOLING_TYPE_LAST,
                          "rank": L.LLAMA_POOLING_TYPE_RANK}[config.pooling]
        # an encoder attends over a whole sequence in one micro-batch: every input of a decode
        # shares the context's cells, so tokens per decode = n_ctx = n_batch = n_ubatch
        c.n_batch = c.n_ubatch = c.n_ctx
        c.n_seq_max = min(int(config.parallel), MAX_SEQ)
        c.kv_unified = True  # a decoder embedder's one long input may use every cell
        return c

    # --- inputs -------------------------------------------------------------------------
    def rerank_tokens(self, query: str, document: str) -> list[int]:
        """One (query, document) pair as the cross-encoder reads it: the GGUF's rerank template
        when it has one (Qwen3-Reranker), else [BOS] query [EOS] [SEP] document [EOS] as
        llama-server builds it (for BERT/XLM-R rerankers: [CLS] q [SEP] d [SEP])."""
        L = self.lib
        raw = L.llama_model_chat_template(self.model, b"rerank")
        if raw:
            prompt = raw.decode("utf-8", errors="replace").replace("{query}", query).replace("{document}", document)
            return self.tokenize(prompt, add_special=False, parse_special=True)
        eos = int(L.llama_vocab_eos(self.vocab))
        if eos < 0:
            eos = int(L.llama_vocab_sep(self.vocab))
        out: list[int] = [self.bos_token] if self.add_bos else []
        out += self.tokenize(query, add_special=False, parse_special=False)
        if self.add_eos:
            out.append(eos)
        if self.add_sep:
            out.append(int(L.llama_vocab_sep(self.vocab)))
        out += self.tokenize(document, add_special=False, parse_special=False)
        if self.add_eos:
            out.append(eos)
        return out

    def fit(self, tokens: list[int], *, truncate: bool) -> list[int] | None:
        """The tokens cut to ``max_input`` when ``truncate`` (keeping a closing special token
        the tokenizer added), or None when they are too long and may not be cut."""
        if len(tokens) <= self.max_input:
            return tokens
        if not truncate:
            return None
        cut = tokens[: self.max_input]
        if self.add_eos or self.add_sep:
            cut[-1] = tokens[-1]
        return cut

    # --- the decode ---------------------------------------------------------------------
    def pooled(self, inputs: list[list[int]]) -> list[list[float]]:
        """One decode of up to ``n_seq_max`` inputs, ``n_ctx`` tokens together; one pooled
        vector per input (rank: the classifier's outputs). Owned by one thread."""
        L = self.lib
        total = sum(len(t) for t in inputs)
        if not inputs or total > self.n_ctx or len(inputs) > self.n_seq_max or any(not t for t in inputs):
            raise ValueError(f"a pooled decode takes 1..{self.n_seq_max} non-empty inputs of {self.n_ctx} "
                             f"tokens together (got {len(inputs)}, {total})")
        if self.mem:  # a decoder embedder's KV cells: each decode starts empty
            L.llama_memory_clear(self.mem, True)
        b = self._batch
        i = 0
        for seq, tokens in enumerate(inputs):
            for pos, tok in enumerate(tokens):
                b.token[i] = tok
                b.pos[i] = pos
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = seq
                b.logits[i] = True
                i += 1
        b.n_tokens = i
        rc = L.llama_decode(self.ctx, b)
        if rc != 0:
            raise AiboxError(f"llama_decode returned {rc} for {len(inputs)} inputs ({total} tokens)",
                             code="engine_error")
        out = []
        n = self.n_out
        for seq in range(len(inputs)):
            ptr = L.llama_get_embeddings_seq(self.ctx, seq)
            if not ptr:
                raise AiboxError("llama.cpp returned no pooled output", code="engine_error")
            out.append(list(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float * n)).contents))
        return out

    def close(self) -> None:
        batch = getattr(self, "_batch", None)
        if batch is not None:
            self.lib.llama_batch_free(batch)
            self._batch = None
        super().close()


def normalise(vec: list[float]) -> list[float]:
    """Unit length (L2), as OpenAI's vectors are; a zero vector stays zero."""
    norm = math.sqrt(math.fsum(x * x for x in vec))
    return [x / norm for x in vec] if norm > 0 else list(vec)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


# --- the worker ----------------------------------------------------------------------------

@dataclass
class _Job:
    inputs: list[list[int]]
    future: Future
    results: list[Any]
    left: int


class PooledWorker:
    """The runtime on its own thread: requests queue (``queue_size`` at most, else
    :class:`QueueFull`), and each decode packs the next inputs in arrival order across requests
    until the context's tokens or sequences are used."""

    def __init__(self, runtime: PooledRuntime, *, queue_size: int, fault: str | None = None) -> None:
        self.rt = runtime
        self.queue_size = queue_size
        self._items: deque[tuple[_Job, int]] = deque()
        self._jobs = 0
        self._cv = threading.Condition()
        self._stopping = False
        self.step_started: float | None = None  # monotonic start of the decode in progress
        self._fault = check_fault(fault)
        self._thread = threading.Thread(target=self._run, name="aibox-pooled", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        return self._jobs

    def submit(self, inputs: list[list[int]]) -> Future:
        """Queue the inputs (each already within ``max_input``); the future's result is one
        output per input, in order."""
        fut: Future = Future()
        with self._cv:
            if self._stopping:
                raise QueueFull("the engine is stopping")
            if self._jobs >= self.queue_size:
                raise QueueFull(f"{self._jobs} requests are waiting (queue_size {self.queue_size})")
            job = _Job(inputs, fut, [None] * len(inputs), len(inputs))
            self._jobs += 1
            self._items.extend((job, i) for i in range(len(inputs)))
            self._cv.notify()
        return fut

    def problem(self, watchdog_s: float) -> str | None:
        """Why the worker can no longer serve: its thread died, or one decode has run longer
        than ``watchdog_s``."""
        if self._thread.ident is not None and not self._thread.is_alive() and not self._stopping:
            return "the pooled decode thread died"
        started = self.step_started
        if started is not None and time.monotonic() - started > watchdog_s:
            return f"one pooled decode has run for more than {watchdog_s} s"
        return None

    def _take(self) -> list[tuple[_Job, int]]:
        rt = self.rt
        taken: list[tuple[_Job, int]] = []
        tokens = 0
        while self._items and len(taken) < rt.n_seq_max:
            job, i = self._items[0]
            n = len(job.inputs[i])
            if taken and tokens + n > rt.n_ctx:
                break
            taken.append(self._items.popleft())
            tokens += n
        return taken

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._items and not self._stopping:
                    self._cv.wait()
                if self._stopping:
                    return
                taken = self._take()
            jobs = {id(job): job for job, _ in taken}
            live = [(job, i) for job, i in taken if not job.future.cancelled()]
            if self._fault is not None:
                self._inject_fault()
            try:
                self.step_started = time.monotonic()
                outs = self.rt.pooled([job.inputs[i] for job, i in live]) if live else []
                error = None
            except Exception as exc:  # noqa: BLE001 - answered to the requests in this decode
                log.error("pooled decode failed: %s", exc)
                outs, error = [], exc
            finally:
                self.step_started = None
            for (job, i), out in zip(live, outs):
                job.results[i] = out
            for job, i in taken:
                job.left -= 1
            with self._cv:
                for job in jobs.values():
                    if error is not None and not job.future.done():
                        self._drop(job)
                        _settle(job.future.set_exception, error)
                    elif job.left == 0:
                        self._jobs -= 1
                        _settle(job.future.set_result, job.results)

    def _inject_fault(self) -> None:
        fault, self._fault = self._fault, None
        log.warning("injecting engine fault %s (test hook)", fault)
        if fault == "loop-crash":
            raise RuntimeError("injected fault: loop-crash")
        self.step_started = time.monotonic()
        threading.Event().wait()  # loop-stall: a decode that never returns

    def _drop(self, job: _Job) -> None:
        """Forget a failed job's inputs still queued (under the lock)."""
        self._items = deque(item for item in self._items if item[0] is not job)
        self._jobs -= 1

    def stop(self, timeout: float = 10.0) -> bool:
        with self._cv:
            self._stopping = True
            for job in {id(j): j for j, _ in self._items}.values():
                _settle(job.future.set_exception, AiboxError("the engine is stopping", code="engine_error"))
            self._items.clear()
            self._cv.notify_all()
        if self._thread.ident is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True


def _settle(setter: Any, value: Any) -> None:
    """Answer a future unless its client cancelled it meanwhile (the HTTP side cancels from
    another thread: checking ``done()`` first would leave a race that kills this thread)."""
    from concurrent.futures import InvalidStateError

    try:
        setter(value)
    except InvalidStateError:
        pass
