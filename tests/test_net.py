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


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_connections_accepted_on_it_send_without_nagle(host):
    """uvicorn serves a socket it is handed through ``loop.create_server(sock=...)``; asyncio turns
    TCP_NODELAY on for an accepted connection only when the socket's proto is IPPROTO_TCP. Without
    it a response written in two sends (headers, then body; one SSE event, then the next) waits
    for the peer's delayed ACK on a keep-alive connection (~40 ms a time, seen on /health)."""
    import asyncio

    if host == "::1" and not socket.has_ipv6:
        pytest.skip("no IPv6 on this box")
    try:
        sock = bind_listening(host, 0, in_use_hint="x", usage_hint="y")
    except AiboxError:
        pytest.skip(f"cannot bind {host} here")

    async def accepted() -> int:
        seen: asyncio.Future = asyncio.get_running_loop().create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport):
                s = transport.get_extra_info("socket")
                seen.set_result(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
        try:
            _, writer = await asyncio.open_connection(host, sock.getsockname()[1])
            value = await asyncio.wait_for(seen, 10)
            writer.close()
            return value
        finally:
            server.close()

    try:
        assert asyncio.run(accepted()) != 0
    finally:
        sock.close()


class _TooLarge(Exception):
    pass


class _BadLength(Exception):
    pass


def _request(chunks: list[bytes], content_length: str | None):
    """A real Starlette request over an ASGI receive that hands the body over in chunks."""
    from starlette.requests import Request

    headers = [(b"content-length", content_length.encode())] if content_length is not None else []
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive():
        return messages.pop(0)

    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers}, receive)


def _read(chunks, content_length, **kw):
    import asyncio

    from aiboxctl.net import read_body_limited

    return asyncio.run(read_body_limited(_request(chunks, content_length), 10, too_large=_TooLarge(), **kw))


def test_a_body_within_the_limit_comes_back_whole():
    assert _read([b"01234", b"5678"], "9") == b"012345678"
    assert _read([b"01234", b"56789"], None) == b"0123456789"


def test_a_declared_length_over_the_limit_is_refused_before_reading():
    with pytest.raises(_TooLarge):
        _read([], "11")


def test_a_chunked_body_over_the_limit_is_refused_as_it_arrives():
    with pytest.raises(_TooLarge):
        _read([b"012345", b"67890"], None)
    with pytest.raises(_TooLarge):  # a Content-Length that lies is no way past the limit
        _read([b"012345", b"67890"], "3")


def test_a_length_that_is_not_a_number_is_the_callers_refusal_or_counted_as_it_comes():
    with pytest.raises(_BadLength):
        _read([b"ok"], "abc", bad_length=_BadLength())
    assert _read([b"ok"], "abc") == b"ok"
    with pytest.raises(_TooLarge):
        _read([b"012345", b"67890"], "abc")
