"""The one place a listening socket is bound (the engine, the front door, install's port check).

Binding before anything slow starts turns a taken port into one clear line at once, not a
uvicorn trace after the model load. Each caller passes its own hints (which knob moves the port).
"""

from __future__ import annotations

import errno
import socket

from aiboxctl.errors import AiboxError, UsageError


def bind_listening(host: str, port: int, *, in_use_hint: str, usage_hint: str) -> socket.socket:
    """A TCP socket bound to host:port (IPv6 when host has a colon), inheritable, not yet listening.

    A port in use is ``port_in_use`` (the same code, so the same exit code, from install, serve
    and the gateway) with ``in_use_hint``; any other bind failure (an address not on this box,
    a privileged port) is a usage error with ``usage_hint``. The caller closes the socket.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        message = f"Cannot listen on {host}:{port}: {exc.strerror or exc}"
        if exc.errno == errno.EADDRINUSE:
            raise AiboxError(message, code="port_in_use", hint=in_use_hint) from None
        raise UsageError(message, hint=usage_hint) from None
    sock.set_inheritable(True)
    return sock
