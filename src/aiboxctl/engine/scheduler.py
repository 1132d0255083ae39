"""Continuous batching over N slots: one decode-loop thread owns the model and the context.

Each step gathers every generating slot's next token plus chunks of waiting prompts (chunked
prefill, bounded by ``n_batch``) into **one** ``llama_decode``, then samples each slot with its
own llama.cpp sampler chain. The HTTP side never touches llama.cpp state: it submits
:class:`Request` objects through a thread-safe inbox and receives events through the
request's ``emit`` callback. Events of one step are handed over together through ``deliver``
(the server: one ``loop.call_soon_threadsafe`` per step, not one wake-up per token and stream).

Per-token Python work is kept to a few attribute writes on the ctypes batch, one sampler
call, a cached piece lookup and an incremental UTF-8 decode. The loop times itself
(:class:`StepTiming`: each step's wall time, the part inside ``llama_decode`` and the part inside
the samplers; the rest is the host's own work) for ``/metrics`` and ``bench/serve_throughput``.
"""

from __future__ import annotations

import ctypes
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any, NamedTuple

from aiboxctl.engine.request import Event, QueueFull, Request, SamplingParams
from aiboxctl.engine.sampler import GrammarSampling, make_sampler, token_logprobs
from aiboxctl.engine.slot import Slot, SlotText, common_prefix

if TYPE_CHECKING:
    from aiboxctl.engine.llama import LlamaRuntime

log = logging.getLogger("aiboxctl.engine")

IDLE_BEAT_S = 1.0  # an idle loop wakes this often to show the watchdog it is alive

# test hook (AIBOX_ENGINE_FAULT): what the loop (or the pooled worker) does on its first decode
FAULTS = ("loop-crash", "loop-stall")


def check_fault(fault: str | None) -> str | None:
    if fault and fault not in FAULTS:
        raise ValueError(f"unknown engine fault {fault!r} (one of {', '.join(FAULTS)})")
    return fault or None


class StepTiming(NamedTuple):
    """What the loop's steps have cost so far, in nanoseconds of wall time. A step runs from the
    moment the loop takes up work (after an idle wait) to the hand-over of its events; ``decode``
    is the time inside ``llama_decode``, ``sample`` inside the samplers (the argmax, the sampler
    chain, the grammar). The rest is the host's overhead: ``host``. Replaced whole once per step,
    so a reader on another thread always sees one consistent set."""

    steps: int = 0
    step_ns: int = 0
    decode_ns: int = 0
    sample_ns: int = 0
    batch_tokens: int = 0  # tokens fed to llama_decode (prompt chunks and generated tokens)
    sampled: int = 0  # tokens sampled (the generated tokens, one per slot that had logits)

    @property
    def host_ns(self) -> int:
        return self.step_ns - self.decode_ns - self.sample_ns


class Scheduler:
    """The decode loop. Create it on any thread; :meth:`start` runs it on its own thread."""

    def __init__(self, rt: "LlamaRuntime", *, parallel: int, n_batch: int, slot_ctx: int,
                 queue_size: int, metrics: Any = None,
                 deliver: Callable[[list[tuple[Callable[[Event], Any], Event]]], None] | None = None,
                 fault: str | None = None) -> None:
        self.rt = rt
        self.L = rt.lib
        self.parallel = parallel
        self.n_batch = n_batch
        self.slot_ctx = slot_ctx
        self.queue_size = queue_size
        self.metrics = metrics
        self.deliver = deliver
        self._out: list[tuple[Callable[[Event], Any], Event]] = []  # this step's events
        self.slots = [Slot(i) for i in range(parallel)]
        self._inbox: queue.SimpleQueue[Request | None] = queue.SimpleQueue()
        self._waiting: deque[Request] = deque()
        self._n_waiting = 0  # submitted, not yet in a slot (guarded by _lock)
        self._lock = threading.Lock()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.batch = self.L.llama_batch_init(n_batch, 0, 1)
        b = self.batch
        self._seq_rows = [b.seq_id[i] for i in range(n_batch)]
        for i in range(n_batch):
            b.n_seq_id[i] = 1
        self.fatal: str | None = None
        # the watchdog's view: when the loop last finished a step or looked for work (it looks at
        # least every IDLE_BEAT_S while idle), so a heartbeat older than a step can take means stuck
        self.beat = time.monotonic()
        self._fault = check_fault(fault)
        import numpy

        self._as_array = numpy.ctypeslib.as_array
        self._n_vocab = rt.n_vocab
        self.timing = StepTiming()
        self._sample_ns = 0  # this step's time inside the samplers
        self._sampled = 0  # this step's sampled tokens
        self._n_out = 0  # rows of logits the step's batch asks for
        self._logits: Any = None  # this step's logits (numpy, n_out × n_vocab), made on first use
        self._views: dict[tuple[int, int], Any] = {}  # (buffer address, rows) → numpy view
        self._picks: list[int] | None = None  # the step's argmax per row when every row is greedy
        self._gaps: list[float] = []  # seconds between tokens of a request, this step

    # --- HTTP side (any thread) ----------------------------------------------------------
    def submit(self, req: Request) -> None:
        with self._lock:
            if self._stop:
                raise QueueFull("the server is shutting down", code="shutting_down")
            # free slots absorb requests the loop has not admitted yet (it admits between steps)
            if self._n_waiting >= self.queue_size + self.parallel - self.busy_slots:
                raise QueueFull(f"the request queue is full ({self.queue_size} waiting)")
            self._n_waiting += 1
        self._inbox.put(req)

    def cancel(self, req: Request) -> None:
        """Ask the loop to drop ``req``; its slot is freed at the start of the next step."""
        req.cancelled = True
        self._inbox.put(None)

    @property
    def queue_depth(self) -> int:
        return self._n_waiting

    @property
    def busy_slots(self) -> int:
        return sum(1 for s in self.slots if s.req is not None)

    @property
    def kv_cells_used(self) -> int:
        return sum(len(s.cached) for s in self.slots)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="aibox-decode", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the loop: requests still running or waiting are cancelled with an error event.
        False when the loop thread is still running after ``timeout`` (stuck in a step)."""
        with self._lock:
            self._stop = True
        self._inbox.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def close(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            # a stuck step may still use the batch and the samplers: leave them to the process exit
            log.warning("decode loop still running; not freeing its batch and samplers")
            return
        for s in self.slots:
            if s.sampler:
                self.L.llama_sampler_free(s.sampler)
                s.sampler = None
            if s.grammar is not None:
                s.grammar.free()
                s.grammar = None
        if self.batch is not None:
            self.L.llama_batch_free(self.batch)
            self.batch = None

    # --- the watchdog's questions (any thread) -------------------------------------------
    def problem(self, stall_s: float) -> str | None:
        """Why the loop can no longer serve, or None: it died, or its heartbeat is older than
        ``stall_s`` (a step that never returns; the idle loop beats every IDLE_BEAT_S)."""
        if self._thread is None:
            return None
        if not self._thread.is_alive():
            if self._stop:
                return None
            return f"the decode loop died ({self.fatal or 'no error recorded'})"
        age = time.monotonic() - self.beat
        if age > stall_s and not self._stop:
            return f"the decode loop made no progress for {age:.0f} s (watchdog_s {stall_s:g})"
        return None

    def abandon(self, message: str) -> None:
        """The loop is stuck for good: tell every request it holds or has queued (an error event),
        from the caller's thread. Only for the fatal path; the process exits next."""
        with self._lock:
            self._stop = True
        reqs = [s.req for s in self.slots if s.req is not None] + list(self._waiting)
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                reqs.append(item)
        out = [(r.emit, ("error", message)) for r in reqs]
        if out:
            self._hand_over(out)

    # --- the loop --------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop:
                busy = self._has_work()
                t0 = perf_counter_ns()
                self._take_inbox(block=not busy)
                if not busy:
                    t0 = perf_counter_ns()  # the wait for work is no part of a step
                if self._stop:
                    break
                self._drop_cancelled()
                self._admit()
                n = self._fill_batch()
                if n == 0:
                    self._flush()  # requests refused while being admitted
                    self.beat = time.monotonic()
                    continue
                if self._fault is not None:
                    self._inject_fault()
                td = perf_counter_ns()
                rc = self.L.llama_decode(self.rt.ctx, self.batch)
                td = perf_counter_ns() - td
                if rc != 0:
                    self._decode_failed(rc)
                else:
                    self._sample_all()
                    self._flush()
                self._timed(t0, td, n)
                self.beat = time.monotonic()
        except Exception as exc:  # noqa: BLE001 - a dead loop must not leave clients hanging
            log.exception("decode loop failed")
            self.fatal = f"{type(exc).__name__}: {exc}"
        finally:
            self._fail_everything("the server is shutting down" if self.fatal is None else
                                  f"engine failure: {self.fatal}")

    def _timed(self, t0: int, decode_ns: int, n_tokens: int) -> None:
        """Add one step to :attr:`timing` (one new tuple: readers never see half a step)."""
        t = self.timing
        self.timing = StepTiming(t.steps + 1, t.step_ns + perf_counter_ns() - t0, t.decode_ns + decode_ns,
                                 t.sample_ns + self._sample_ns, t.batch_tokens + n_tokens, t.sampled + self._sampled)
        self._sample_ns = 0
        self._sampled = 0

    def _inject_fault(self) -> None:
        fault, self._fault = self._fault, None
        log.warning("injecting engine fault %s (test hook)", fault)
        if fault == "loop-crash":
            raise RuntimeError("injected fault: loop-crash")
        threading.Event().wait()  # loop-stall: a step that never returns

    def _has_work(self) -> bool:
        return bool(self._waiting) or any(s.req is not None for s in self.slots)

    def _take_inbox(self, *, block: bool) -> None:
        inbox = self._inbox
        while block:
            try:
                item = inbox.get(timeout=IDLE_BEAT_S)
            except queue.Empty:
                self.beat = time.monotonic()  # idle, not stuck
                if self._stop:
                    return
                continue
            if item is not None:
                self._waiting.append(item)
            break
        while True:
            try:
                item = inbox.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                self._waiting.append(item)

    def _drop_cancelled(self) -> None:
        for s in self.slots:
            r = s.req
            if r is not None and r.cancelled:
                r.finish_reason = "cancelled"
                self._release(s)
        if any(r.cancelled for r in self._waiting):
            keep = deque(r for r in self._waiting if not r.cancelled)
            with self._lock:
                self._n_waiting -= len(self._waiting) - len(keep)
            self._waiting = keep

    def _admit(self) -> None:
        while self._waiting:
            free = [s for s in self.slots if s.req is None]
            if not free:
                return
            req = self._waiting.popleft()
            with self._lock:
                self._n_waiting -= 1
            # the free slot whose cached tokens share the longest prefix with this prompt
            slot = max(free, key=lambda s: common_prefix(s.cached, req.prompt))
            try:
                self._bind(slot, req)
            except Exception as exc:  # noqa: BLE001 - one request's failure is that request's alone
                self._fail_one(slot, exc, "starting", req)

    def _bind(self, s: Slot, req: Request) -> None:
        L, mem = self.L, self.rt.mem
        prompt = req.prompt
        n = common_prefix(s.cached, prompt)
        if n >= len(prompt):
            n = len(prompt) - 1  # the last prompt token must be decoded again for its logits
        reused = False
        if n > 0 and L.llama_memory_seq_rm(mem, s.seq, n, -1):
            reused = True
            if self.rt.n_swa > 0:
                # a sliding-window cache may already have dropped cells the new tokens attend to
                pos_min = L.llama_memory_seq_pos_min(mem, s.seq)
                reused = 0 <= pos_min <= max(0, n - self.rt.n_swa)
        if not reused:
            L.llama_memory_seq_rm(mem, s.seq, -1, -1)
            n = 0
        del s.cached[n:]
        if self.metrics is not None and n:
            self.metrics.prefix_reused(n)
        s.req = req
        s.n_fed = n
        s.generating = False
        s.out_idx = -1
        p = req.params
        s.max_tokens = max(1, min(p.max_tokens, self.slot_ctx - len(prompt)))
        s.text = SlotText(p.stop, req.reasoning)
        s.forced = []
        s.argmax = p.plain_greedy
        s.sampler = None if s.argmax else self._make_sampler(p, prompt)
        s.grammar = (GrammarSampling(L, self.rt.vocab, self._n_vocab, p.grammar, p.grammar_triggers)
                     if p.grammar else None)

    def _make_sampler(self, p: SamplingParams, prompt: list[int]) -> Any:
        return make_sampler(self.L, self._n_vocab, p, prompt)

    def _fill_batch(self) -> int:
        b = self.batch
        tok, pos, logits, rows = b.token, b.pos, b.logits, self._seq_rows
        i = 0
        n_out = 0  # rows of logits: llama.cpp keeps them in the batch's order
        prefilling = []
        for s in self.slots:
            if s.req is None:
                continue
            if s.generating:
                t = s.last
                tok[i] = t
                pos[i] = len(s.cached)
                rows[i][0] = s.seq
                logits[i] = 1
                s.out_idx = i
                s.out_row = n_out
                n_out += 1
                s.cached.append(t)
                i += 1
            else:
                prefilling.append(s)
        budget = self.n_batch - i
        # oldest request first, so a long prompt finishes its prefill instead of starving
        prefilling.sort(key=lambda s: s.req.t_submit)
        for s in prefilling:
            if budget <= 0:
                s.out_idx = -1
                continue
            prompt = s.req.prompt
            start = s.n_fed
            take = min(budget, len(prompt) - start)
            seq = s.seq
            for k in range(start, start + take):
                tok[i] = prompt[k]
                pos[i] = k
                rows[i][0] = seq
                logits[i] = 0
                i += 1
            s.cached.extend(prompt[start:start + take])
            s.n_fed = start + take
            budget -= take
            if s.n_fed == len(prompt):
                logits[i - 1] = 1
                s.out_idx = i - 1
                s.out_row = n_out
                n_out += 1
            else:
                s.out_idx = -1
        b.n_tokens = i
        self._n_out = n_out
        return i

    def _sample_all(self) -> None:
        now = time.monotonic()
        self._logits = None
        self._picks = None
        sampling = [s for s in self.slots if s.req is not None and s.out_idx >= 0]
        if len(sampling) > 1 and len(sampling) == self._n_out and all(s.argmax and s.grammar is None for s in sampling):
            # every row is a plain greedy pick: one argmax over the step's logits, not one per slot
            ts = perf_counter_ns()
            self._picks = self._step_logits().argmax(axis=1).tolist()
            self._sample_ns += perf_counter_ns() - ts
        for s in sampling:
            try:
                self._sample_one(s, now)
            except Exception as exc:  # noqa: BLE001 - one request's failure is that request's alone
                self._fail_one(s, exc, "sampling")
        if self._gaps:
            if self.metrics is not None:
                self.metrics.token_latencies(self._gaps)
            self._gaps = []

    def _step_logits(self) -> Any:
        """This step's logits, one row per output in the batch's order: a numpy view into
        llama.cpp's buffer, looked up once per step and kept while the buffer and the number of
        rows stay the same (making a view costs more than the rest of a token's host work)."""
        if self._logits is None:
            ptr = self.L.llama_get_logits(self.rt.ctx)
            key = (ctypes.addressof(ptr.contents), self._n_out)
            view = self._views.get(key)
            if view is None:
                if len(self._views) >= 4 * self.parallel:  # bounded: a buffer that moved leaves old keys
                    self._views.clear()
                view = self._views[key] = self._as_array(ptr, shape=(self._n_out, self._n_vocab))
            self._logits = view
        return self._logits

    def _fail_one(self, s: Slot, exc: Exception, stage: str, req: Request | None = None) -> None:
        """A per-request step raised: end that request with an error event, free its slot and
        forget its cache (its state is unknown); the loop goes on with the others."""
        req = req or s.req
        message = f"engine error while {stage} this request: {type(exc).__name__}: {exc}"
        log.error("request %s: %s", req.id if req is not None else "?", message)
        if req is not None:
            self._out.append((req.emit, ("error", message)))
        self._release(s)
        self.L.llama_memory_seq_rm(self.rt.mem, s.seq, -1, -1)
        s.cached.clear()
        s.n_fed = 0

    def _sample_one(self, s: Slot, now: float) -> None:
        L, rt, ctx = self.L, self.rt, self.rt.ctx
        metrics = self.metrics
        req = s.req
        t = self._take_forced(s) if s.forced else -1
        ts = perf_counter_ns()
        if t >= 0:
            pass  # the thinking budget is spent: its close is written, not sampled
        elif s.grammar is not None:
            t = s.grammar.sample(s.sampler, self._step_logits()[s.out_row])
        elif s.argmax:
            # greedy through llama_sampler_sample builds a candidate array over the whole
            # vocabulary (262k entries for gemma) for every token; numpy's argmax reads the
            # logits in place at a tenth of the cost and picks the same (first) maximum
            t = self._picks[s.out_row] if self._picks is not None else int(self._step_logits()[s.out_row].argmax())
        else:
            t = L.llama_sampler_sample(s.sampler, ctx, s.out_idx)
        self._sample_ns += perf_counter_ns() - ts
        self._sampled += 1
        if req.params.logprobs is not None and (req.params.ignore_eos or not rt.is_eog(t)):
            row = self._step_logits()[s.out_row]
            self._out.append((req.emit, ("logprobs", token_logprobs(row, t, req.params.logprobs, rt.piece))))
        s.out_idx = -1
        req.completion_tokens += 1
        if req.t_first is None:
            req.t_first = now
            if metrics is not None:
                metrics.first_token(now - req.t_submit)
        else:
            self._gaps.append(now - req.t_last)  # observed together after the step
        req.t_last = now
        if not req.params.ignore_eos and rt.is_eog(t):
            self._finish(s, "stop")
            return
        text, stopped = s.text.push(rt.piece(t))
        if s.text.thought:
            self._out.append((req.emit, ("reasoning", s.text.thought)))
        if text:
            self._out.append((req.emit, ("text", text)))
        if s.text.thinking:
            req.reasoning_tokens += 1
            if req.think_budget is not None and not s.forced and req.reasoning_tokens >= req.think_budget:
                s.forced = list(req.think_close)
        if stopped:
            req.stop_sequence = s.text.stopped_by
            self._finish(s, "stop", flush=False)
            return
        if req.completion_tokens >= s.max_tokens or len(s.cached) + 1 >= self.slot_ctx:
            self._finish(s, "length")
            return
        s.last = t
        s.generating = True

    def _take_forced(self, s: Slot) -> int:
        """The next token of a forced close (the thinking budget), accepted by the request's
        sampler chain and grammar as a sampled one would be; -1 when the grammar does not allow
        it (the grammar governs: the close is dropped and the slot samples on)."""
        t = s.forced.pop(0)
        grammar = s.grammar
        if grammar is not None:
            if not grammar.allows(t):
                s.forced.clear()
                return -1
            self.L.llama_sampler_accept(grammar.grammar, t)
        if s.sampler:
            self.L.llama_sampler_accept(s.sampler, t)
        return t

    def _finish(self, s: Slot, reason: str, *, flush: bool = True) -> None:
        req = s.req
        if flush:
            tail = s.text.tail()
            if s.text.thought:
                self._out.append((req.emit, ("reasoning", s.text.thought)))
            if tail:
                self._out.append((req.emit, ("text", tail)))
        req.finish_reason = reason
        if self.metrics is not None:
            self.metrics.finished(req)
        self._out.append((req.emit, ("done", reason, req.prompt_tokens, req.completion_tokens)))
        self._release(s)

    def _release(self, s: Slot) -> None:
        # the sequence's KV cells stay: the next request may reuse the common prefix
        # if still generating, s.last was sampled but never fed; s.cached is exactly what the KV holds
        s.req = None
        s.generating = False
        s.out_idx = -1
        if s.sampler:
            self.L.llama_sampler_free(s.sampler)
            s.sampler = None
        if s.grammar is not None:
            s.grammar.free()
            s.grammar = None

    def _decode_failed(self, rc: int) -> None:
        """llama_decode refused the batch (1: no KV room; <0: error). Fail the requests in it
        and forget their cache so the next step starts clean."""
        message = ("no room left in the KV cache" if rc == 1 else f"llama_decode failed ({rc})")
        log.error("%s; failing the requests in this step", message)
        for s in self.slots:
            if s.req is None:
                continue
            if s.generating or s.n_fed > 0:
                self._out.append((s.req.emit, ("error", message)))
                self._release(s)
                self.L.llama_memory_seq_rm(self.rt.mem, s.seq, -1, -1)
                s.cached.clear()
        self._flush()

    def _fail_everything(self, message: str) -> None:
        for s in self.slots:
            if s.req is not None:
                self._out.append((s.req.emit, ("error", message)))
                self._release(s)
        self._take_inbox(block=False)
        for r in self._waiting:
            self._out.append((r.emit, ("error", message)))
        self._waiting.clear()
        with self._lock:
            self._n_waiting = 0
        self._flush()

    def _flush(self) -> None:
        out = self._out
        if not out:
            return
        self._out = []
        self._hand_over(out)

    def _hand_over(self, out: list[tuple[Callable[[Event], Any], Event]]) -> None:
        """Events to their requests: all of them in one ``deliver`` call when there is one."""
        if self.deliver is None:
            for emit, event in out:
                emit(event)
        else:
            self.deliver(out)
