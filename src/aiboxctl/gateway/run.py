"""``aiboxctl gateway``'s core: the app under uvicorn until SIGTERM/SIGINT (exit 0).

With TLS the same app, in the same server, also listens for plain HTTP on 127.0.0.1
(``loopback_port``): this box's own tools reach it without a CA while the LAN gets HTTPS only.
uvicorn serves a list of sockets with one SSL context for all, so :class:`_Server` adds the plain
socket after uvicorn's own startup, with uvicorn's protocol factory and server state: one event
loop, one lifespan, one graceful shutdown for both listeners."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from aiboxctl.errors import AiboxError, UsageError
from aiboxctl.gateway.config import GatewayConfig
from aiboxctl.net import bind_listening, freeze_heap

GRACEFUL_TIMEOUT_S = 10  # streams still open at SIGTERM get this long to finish


@dataclass(frozen=True)
class GatewayRunResult:
    host: str
    port: int
    engines: int
    models: int
    stopped_by: str
    loopback_port: int | None = None  # plain HTTP on 127.0.0.1 beside HTTPS


def bind_socket(host: str, port: int) -> socket.socket:
    """Listen before anything starts, so a taken port is one clear line and not a uvicorn trace."""
    return bind_listening(host, port, in_use_hint="set another port in gateway.yaml (or --port), or stop what listens there",
                          usage_hint="set host/port in gateway.yaml (or --host/--port)")


def bind_loopback(port: int) -> socket.socket:
    from aiboxctl.gateway.config import LOOPBACK_HOST

    return bind_listening(LOOPBACK_HOST, port, in_use_hint="set loopback_port in gateway.yaml to a free port "
                          "(0: no plain listener), or stop what listens there",
                          usage_hint="set loopback_port in gateway.yaml")


def run_gateway(config: GatewayConfig, *, log_level: str = "info") -> GatewayRunResult:
    import logging

    import uvicorn

    from aiboxctl.gateway.app import ROUTES, create_app

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config.internal_token()  # a missing token file is a usage error now, not at the first request
    tls = tls_files(config)
    access = open_access(config)
    try:
        gate = None
        if access is not None:
            from aiboxctl.gateway.access import AccessGate

            gate = AccessGate(access, routes=ROUTES)
        sock = bind_socket(config.host, config.port)
        lp = config.plain_loopback_port
        try:
            plain = bind_loopback(lp) if lp is not None else None
        except BaseException:
            sock.close()
            raise
        server = _server_class(uvicorn)(uvicorn.Config(
            create_app(config, gate=gate), log_level=log_level, lifespan="on", access_log=log_level == "debug",
            timeout_graceful_shutdown=GRACEFUL_TIMEOUT_S, ssl_certfile=str(tls.cert) if tls else None,
            ssl_keyfile=str(tls.key) if tls else None), plain)
        return _serve(server, sock, config)
    finally:
        if access is not None:
            access.close()  # the ledger's writer drains: every row handed to it is committed


def _server_class(uvicorn: Any) -> Any:
    class _Server(uvicorn.Server):
        """uvicorn's Server, plus a plain-HTTP listener (no SSL) on the loopback socket."""

        def __init__(self, config: Any, plain: socket.socket | None) -> None:
            super().__init__(config)
            self.plain = plain

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            import asyncio
            import logging

            await super().startup(sockets)
            freeze_heap()  # the app and the engines' clients are made: ready
            if not self.started or self.plain is None:
                return
            cfg, state = self.config, self.server_state

            def create_protocol(_loop: Any = None) -> Any:  # as uvicorn's startup makes it
                return cfg.http_protocol_class(config=cfg, server_state=state, app_state=self.lifespan.state,
                                               _loop=_loop)

            loop = asyncio.get_running_loop()
            self.servers.append(await loop.create_server(create_protocol, sock=self.plain, ssl=None,
                                                         backlog=cfg.backlog))
            host, port = self.plain.getsockname()[:2]
            logging.getLogger("aiboxctl.gateway").info("plain HTTP for this box's own tools on http://%s:%d "
                                                       "(loopback only)", host, port)

    return _Server


def tls_files(config: GatewayConfig) -> Any:
    """The TLS pair named by tls_dir, checked now (one line, exit 2, instead of a uvicorn trace)."""
    if config.tls_dir is None:
        return None
    from aiboxctl.access.tls import TlsFiles, check_pair

    files = TlsFiles(config.tls_dir)
    for path in (files.cert, files.key):
        if not path.is_file():
            raise UsageError(f"TLS file not found: {path}", hint=f"aiboxctl tls init (files in {config.tls_dir}), "
                             "or remove tls_dir from gateway.yaml")
    check_pair(files.cert, files.key)
    return files


def open_access(config: GatewayConfig) -> Any:
    """AccessControl over the configured files, or None when access is off."""
    settings = config.access_settings()
    if settings is None:
        return None
    if not settings.keys_file.is_file():
        raise UsageError(f"keys file not found: {settings.keys_file}",
                         hint="aiboxctl keys add NAME (it creates the file), or remove keys_file/access_dir")
    from aiboxctl.access.gate import AccessControl

    for f in (settings.ledger_file, settings.audit_file):
        if f is not None:
            f.parent.mkdir(parents=True, exist_ok=True)
    return AccessControl(settings)


def _serve(server: Any, sock: socket.socket, config: GatewayConfig) -> GatewayRunResult:
    import signal

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
        if server.plain is not None:
            server.plain.close()
    if not server.started:
        raise AiboxError(f"the gateway did not start on {config.host}:{config.port} (see the log above)",
                         code="gateway_failed", hint="check gateway.yaml")
    return GatewayRunResult(config.host, config.port, len(config.engines), len(config.models()),
                            received[0] if received else "shutdown", config.plain_loopback_port)
