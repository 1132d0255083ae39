"""Run the engine: bind, serve until SIGTERM/SIGINT, stop gracefully (exit 0).

The socket is bound before anything slow happens, so a port in use is a clear error at once
and /health answers (503) during the self-test and the model load.

A watchdog thread asks the decode loop every second whether it still serves (it died, or a
step has not returned for ``watchdog_s``); when it does not, /health turns 503 and the process
stops with exit 5 (ServiceDown), so systemd (Restart=on-failure) or the built-in supervisor
starts a fresh one instead of leaving a process that answers /health but never a request.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from dataclasses import dataclass
from typing import Any

from aiboxctl.engine.config import EngineConfig
from aiboxctl.env import Env
from aiboxctl.errors import AiboxError, ServiceDown, VerificationFailed
from aiboxctl.net import bind_listening

GRACEFUL_TIMEOUT_S = 10  # in-flight requests get this long to finish after SIGTERM
WATCH_INTERVAL_S = 1.0  # how often the watchdog asks the decode loop
# after the engine failed at run time, keep answering this long before stopping, so health
# checkers see the 503 and the clients their error responses
FATAL_DRAIN_S = 2.0


@dataclass(frozen=True)
class ServeResult:
    model: str
    host: str
    port: int
    stopped_by: str  # "SIGTERM", "SIGINT", ...
    fallback: str | None
    fallback_reason: str | None
    requests: int


def bind_socket(host: str, port: int) -> socket.socket:
    return bind_listening(host, port, in_use_hint="choose another --port, or stop what is listening there",
                          usage_hint="choose another --port or --host")


def serve(config: EngineConfig, *, log_level: str = "info") -> ServeResult:
    import uvicorn

    from aiboxctl.engine.security import AuditLog, KeyRing
    from aiboxctl.engine.api.app import create_app
    from aiboxctl.engine.state import EngineState, engine_problem

    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    state = EngineState(config)
    state.fault = os.environ.get(Env.ENGINE_FAULT) or None
    if config.api_keys_file is not None:
        state.keys = KeyRing.load(config.api_keys_file)
    if config.audit_log is not None:
        state.audit = AuditLog(config.audit_log, content=config.audit_content)
    sock = bind_socket(config.host, config.port)
    app = create_app(state)
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=log_level == "debug",
                                           timeout_graceful_shutdown=GRACEFUL_TIMEOUT_S, lifespan="on"))

    def fatal(_reason: str) -> None:
        if not state.started_serving:  # a failed start: nothing to drain
            server.should_exit = True
            return
        timer = threading.Timer(FATAL_DRAIN_S, lambda: setattr(server, "should_exit", True))
        timer.daemon = True
        timer.start()

    state.on_fatal = fatal
    # uvicorn re-raises the signal it caught once it has shut down; with these handlers in
    # place that re-raise is a no-op and a SIGTERM ends in exit 0 instead of death by signal.
    received: list[str] = []

    def note_signal(signum: int, _frame: Any) -> None:
        received.append(signal.Signals(signum).name)

    previous = {s: signal.signal(s, note_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    done = threading.Event()

    def watch() -> None:
        while not done.wait(WATCH_INTERVAL_S):
            if engine_problem(state) is not None:  # logs, answers its requests, calls on_fatal
                return

    threading.Thread(target=watch, name="aibox-watchdog", daemon=True).start()
    try:
        server.run(sockets=[sock])
    finally:
        done.set()
        for s, h in previous.items():
            signal.signal(s, h)
        sock.close()
    if state.status == "failed" and state.started_serving:
        raise ServiceDown(f"engine unhealthy: {state.reason}", code="engine_unhealthy",
                          hint="the service manager restarts it; aiboxctl logs shows what happened")
    if state.status == "failed":
        st = state.selftest
        if st is not None and not st.ok:
            raise VerificationFailed(state.reason or "self-test failed", code="selftest_failed",
                                     hint="aiboxctl probe --selftest; check the model file and engine options",
                                     data={"selftest": st.to_dict()})
        raise AiboxError(state.reason or "engine failed", code="engine_failed",
                         hint="check the model path and engine options in the config")
    st = state.selftest
    total = sum(int(s.value) for m in state.metrics.requests.collect() for s in m.samples
                if s.name.endswith("_total"))
    return ServeResult(config.served_name, config.host, config.port, received[0] if received else "shutdown",
                       st.fallback if st else None, st.fallback_reason if st else None, total)
