"""The one listening-socket helper behind serve, the gateway and install's port check."""

from __future__ import annotations

import socket

import pytest

from aiboxctl.errors import EXIT_CODES, AiboxError, ExitCode
from aiboxctl.net import bind_listening


def test_a_port_in_use_is_port_in_use_with_the_callers_hint():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(AiboxError) as info:
            bind_listening("127.0.0.1", port, in_use_hint="in-use hint", usage_hint="usage hint")
    err = info.value
    assert err.code == "port_in_use" and err.hint == "in-use hint"
    assert EXIT_CODES["port_in_use"] == ExitCode.ERROR
    assert str(err).startswith(f"Cannot listen on 127.0.0.1:{port}: ")


def test_an_address_not_on_this_box_is_a_usage_error_not_a_busy_port():
    with pytest.raises(AiboxError) as info:  # 192.0.2.0/24 is TEST-NET-1: never a local address
        bind_listening("192.0.2.1", 0, in_use_hint="in-use hint", usage_hint="usage hint")
    err = info.value
    assert err.code == "usage" and err.exit_code == ExitCode.USAGE and err.hint == "usage hint"


def test_a_free_port_comes_back_bound_and_inheritable():
    sock = bind_listening("127.0.0.1", 0, in_use_hint="x", usage_hint="y")
    try:
        assert sock.getsockname()[1] > 0 and sock.get_inheritable()
    finally:
        sock.close()
