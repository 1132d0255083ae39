"""The engine as the HTTP side sees it, and its life: boot (self-test in a child process, load,
start the decode loop) on a background thread, the watchdog's verdict, shutdown.

Start-up: the server listens at once; /health answers 503 while the self-test runs and the
model loads, 200 once ready. Tokens come back from the decode loop through
``loop.call_soon_threadsafe``, one wake-up of the event loop per decode step.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiboxctl.engine.config import EngineConfig
from aiboxctl.engine.metrics import EngineMetrics
from aiboxctl.engine.scheduler import Scheduler
from aiboxctl.engine.security import AuditLog, KeyRing
from aiboxctl.net import freeze_heap

log = logging.getLogger("aiboxctl.engine")


@dataclass
class EngineState:
    """What the HTTP side knows about the engine; filled in by the boot thread."""

    config: EngineConfig
    status: str = "starting"  # starting | selftest | loading | ok | failed | stopping
    reason: str | None = None
    selftest: Any = None  # SelfTestResult
    runtime: Any = None
    scheduler: Scheduler | None = None
    embedder: Any = None  # PooledWorker of an embedding or rerank engine (engine/embedding.py)
    template: Any = None  # CompiledTemplate
    template_source: str | None = None
    reasoning: Any = None  # the served model's reasoning parser class (engine.reasoning), or None
    metrics: EngineMetrics = field(default_factory=EngineMetrics)
    keys: KeyRing | None = None
    audit: AuditLog | None = None
    started: float = field(default_factory=time.time)
    loop: Any = None  # the asyncio loop of the HTTP side (set at start-up)
    on_fatal: Callable[[str], None] | None = None
    fault: str | None = None  # test hook for the decode loop (Env.ENGINE_FAULT)

    @property
    def started_serving(self) -> bool:
        """The engine started (a decode loop or a pooled worker): a failure now is a run-time
        one (exit 5, restarted), not a failed start."""
        return (self.scheduler or self.embedder) is not None

    @property
    def served_config(self) -> EngineConfig:
        return self.selftest.config if self.selftest is not None and self.selftest.ok else self.config


class _BootFailed(Exception):
    pass


def boot(state: EngineState) -> None:
    """Self-test, load, start the decode loop. Runs on a background thread."""
    from aiboxctl.engine.llama import LlamaRuntime
    from aiboxctl.engine.selftest import run_selftest
    from aiboxctl.engine.template import resolve_chat_template

    cfg = state.config
    try:
        if cfg.selftest:
            state.status = "selftest"
            log.info("self-test: proving the configuration in a child process")
            result = run_selftest(cfg)
            state.selftest = result
            if not result.ok:
                raise _BootFailed(f"self-test failed: {result.fallback_reason}")
            if result.fallback:
                log.warning("self-test: serving with fallback %r because %s", result.fallback,
                            result.fallback_reason)
            else:
                log.info("self-test passed with the configured settings")
            cfg = result.config
        state.status = "loading"
        if cfg.role != "chat":
            _boot_pooled(state, cfg)
            return
        rt = LlamaRuntime(cfg)
        state.runtime = rt
        spec = resolve_chat_template(cfg, rt)
        state.template = spec.compile()
        state.template_source = spec.source
        from aiboxctl.engine.reasoning import for_model

        state.reasoning = for_model(cfg.reasoning_format, spec.text, cfg.model, cfg.model_name)
        loop = state.loop

        def deliver(batch: list) -> None:
            # one wake-up of the event loop per decode step, whatever the number of streams
            try:
                loop.call_soon_threadsafe(_deliver, batch)
            except RuntimeError:  # the loop is closed: the server has already stopped
                pass

        sched = Scheduler(rt, parallel=cfg.parallel, n_batch=cfg.n_batch, slot_ctx=cfg.slot_ctx,
                          queue_size=cfg.queue_size, metrics=state.metrics, deliver=deliver, fault=state.fault)
        state.metrics.bind(sched, rt.n_ctx)
        sched.start()
        state.scheduler = sched
        freeze_heap()
        state.status = "ok"
        log.info("ready: %s, %d slots × %d tokens, chat template from %s", cfg.served_name, cfg.parallel,
                 cfg.slot_ctx, spec.source)
    except Exception as exc:  # noqa: BLE001 - reported in /health and by the CLI's exit
        reason = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        state.status, state.reason = "failed", reason
        log.error("engine failed to start: %s", reason)
        if state.on_fatal is not None:
            state.on_fatal(reason)


def _boot_pooled(state: EngineState, cfg: EngineConfig) -> None:
    """An embedding or rerank engine: the pooled runtime and its worker, no decode loop."""
    from aiboxctl.engine.embedding import PooledRuntime, PooledWorker

    rt = PooledRuntime(cfg)
    state.runtime = rt
    worker = PooledWorker(rt, queue_size=cfg.queue_size, fault=state.fault)
    worker.start()
    state.embedder = worker
    state.metrics.queue_depth.set_function(lambda: worker.queue_depth)
    state.metrics.ready.set(1)
    freeze_heap()
    state.status = "ok"
    log.info("ready: %s (%s, %s pooling, %d dimensions), %d inputs × %d tokens per decode", cfg.served_name,
             cfg.role, rt.pooling, rt.n_out, rt.n_seq_max, rt.n_ctx)


def _deliver(batch: list) -> None:
    for emit, event in batch:
        emit(event)


_FATAL_LOCK = threading.Lock()


def engine_problem(state: EngineState) -> str | None:
    """Why a started engine can no longer serve (its decode loop died or hangs), else None.
    The first caller to see it marks the engine failed, logs one line, answers the requests the
    loop holds with an error and calls ``on_fatal`` (serve: stop, exit 5, get restarted)."""
    if state.status == "failed" and state.started_serving:
        return state.reason
    sched = state.scheduler or state.embedder
    if state.status != "ok" or sched is None:
        return None
    reason = sched.problem(state.served_config.watchdog_s)
    if reason is None:
        return None
    with _FATAL_LOCK:
        if state.status == "failed":
            return state.reason
        state.status, state.reason = "failed", reason
    log.error("engine unhealthy, stopping so that it is restarted: %s", reason)
    if state.scheduler is not None:
        state.scheduler.abandon(f"engine failure: {reason}")
    if state.on_fatal is not None:
        state.on_fatal(reason)
    return reason


def shutdown(state: EngineState) -> None:
    if state.status != "failed":  # serve's exit code and /health still report a failure
        state.status = "stopping"
    stopped = True
    if state.scheduler is not None:
        # a loop that already failed gets no grace: a hung step may never return
        stopped = state.scheduler.stop(timeout=1.0 if state.status == "failed" else 10.0)
        state.scheduler.close()
    if state.embedder is not None:
        stopped = state.embedder.stop(timeout=1.0 if state.status == "failed" else 10.0)
    if state.runtime is not None and stopped:  # a hung step may still be using the context
        state.runtime.close()
