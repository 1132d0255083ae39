"""``aiboxctl gateway``'s core: the app under uvicorn until SIGTERM/SIGINT."""

from __future__ import annotations

from dataclasses import dataclass

from aiboxctl.errors import AiboxError
from aiboxctl.gateway.config import GatewayConfig


@dataclass(frozen=True)
class GatewayRunResult:
    host: str
    port: int
    engines: int
    models: int
    stopped_by: str


def run_gateway(config: GatewayConfig, *, log_level: str = "info") -> GatewayRunResult:
    import errno
    import logging

    import uvicorn

    from aiboxctl.gateway.app import create_app

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config.internal_token()  # a missing token file is a usage error now, not at the first request
    app = create_app(config)
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level=log_level,
                                           lifespan="on", access_log=False, timeout_graceful_shutdown=10))
    try:
        server.run()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise AiboxError(f"port {config.port} on {config.host} is already in use", code="port_in_use",
                             hint="stop what listens there or set port in gateway.yaml") from None
        raise
    if not server.started:
        raise AiboxError(f"the gateway did not start on {config.host}:{config.port} (see the log above)",
                         code="gateway_failed", hint="check the address and port in gateway.yaml")
    return GatewayRunResult(config.host, config.port, len(config.engines), len(config.models()), "signal")
