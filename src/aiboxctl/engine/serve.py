"""Run the engine: bind, serve until SIGTERM/SIGINT, stop gracefully (exit 0).

The socket is bound before anything slow happens, so a port in use is a clear error at once
and /health answers (503) during the self-test and the model load.
"""

from __future__ import annotations

import logging
import signal
import socket
from dataclasses import dataclass
from typing import Any

from aiboxctl.engine.config import EngineConfig
from aiboxctl.errors import AiboxError, UsageError, VerificationFailed

GRACEFUL_TIMEOUT_S = 10  # in-flight requests get this long to finish after SIGTERM


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
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"Cannot listen on {host}:{port}: {exc.strerror or exc}",
                         hint="choose another --port, or stop what is listening there") from None
    sock.set_inheritable(True)
    return sock


def serve(config: EngineConfig, *, log_level: str = "info") -> ServeResult:
    import uvicorn

    from aiboxctl.engine.security import AuditLog, KeyRing
    from aiboxctl.engine.server import EngineState, create_app

    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    state = EngineState(config)
    if config.api_keys_file is not None:
        state.keys = KeyRing.load(config.api_keys_file)
    if config.audit_log is not None:
        state.audit = AuditLog(config.audit_log, content=config.audit_content)
    sock = bind_socket(config.host, config.port)
    app = create_app(state)
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=log_level == "debug",
                                           timeout_graceful_shutdown=GRACEFUL_TIMEOUT_S, lifespan="on"))

    def fatal(_reason: str) -> None:
        server.should_exit = True

    state.on_fatal = fatal
    # uvicorn re-raises the signal it caught once it has shut down; with these handlers in
    # place that re-raise is a no-op and a SIGTERM ends in exit 0 instead of death by signal.
    received: list[str] = []

    def note_signal(signum: int, _frame: Any) -> None:
        received.append(signal.Signals(signum).name)

    previous = {s: signal.signal(s, note_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(sockets=[sock])
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        sock.close()
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
