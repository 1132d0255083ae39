"""``aiboxctl gateway``'s core: the app under uvicorn until SIGTERM/SIGINT (exit 0)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from aiboxctl.errors import AiboxError, UsageError
from aiboxctl.gateway.config import GatewayConfig

GRACEFUL_TIMEOUT_S = 10  # streams still open at SIGTERM get this long to finish


@dataclass(frozen=True)
class GatewayRunResult:
    host: str
    port: int
    engines: int
    models: int
    stopped_by: str


def bind_socket(host: str, port: int) -> socket.socket:
    """Listen before anything starts, so a taken port is one clear line and not a uvicorn trace."""
    import errno

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise AiboxError(f"Cannot listen on {host}:{port}: {exc.strerror or exc}", code="port_in_use",
                             hint="set another port in gateway.yaml (or --port), or stop what listens there") from None
        raise UsageError(f"Cannot listen on {host}:{port}: {exc.strerror or exc}",
                         hint="set host/port in gateway.yaml (or --host/--port)") from None
    sock.set_inheritable(True)
    return sock


def run_gateway(config: GatewayConfig, *, log_level: str = "info") -> GatewayRunResult:
    import logging
    import signal

    import uvicorn

    from aiboxctl.gateway.app import create_app

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per relayed request
    config.internal_token()  # a missing token file is a usage error now, not at the first request
    sock = bind_socket(config.host, config.port)
    server = uvicorn.Server(uvicorn.Config(create_app(config), log_level=log_level, lifespan="on",
                                           access_log=log_level == "debug",
                                           timeout_graceful_shutdown=GRACEFUL_TIMEOUT_S))
    # uvicorn re-raises the signal it caught once it has shut down; with these handlers in
    # place that re-raise is a no-op and SIGTERM ends in exit 0 instead of death by signal.
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
    if not server.started:
        raise AiboxError(f"the gateway did not start on {config.host}:{config.port} (see the log above)",
                         code="gateway_failed", hint="check gateway.yaml")
    return GatewayRunResult(config.host, config.port, len(config.engines), len(config.models()),
                            received[0] if received else "shutdown")
