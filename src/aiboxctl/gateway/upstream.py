"""The front door's HTTP client to one engine: the only module that knows which HTTP library
carries the relay (aiohttp), so that the pool's health checks, the relay and the document picker
see three outcomes, not a library's exception tree:

* :class:`Unreachable`: nothing came back (refused, reset or closed before an answer's head, a
  connect that timed out): the request may go to another replica;
* :class:`Silent`: a read waited longer than it was allowed (a health check's timeout, a
  stream's ``stream_idle_timeout_s``);
* :class:`Cut`: the answer broke off after its head.

Why aiohttp (measured with ``bench/front_door_burst.py`` and a client-side loop of 64 concurrent
32-chunk streams against the engine stand-in, 2026-12-01): CPU per streamed request 9.2 ms with
httpx 0.28, 2.4 ms with httpx2, 0.58 ms with aiohttp. httpx's pool walks (and polls) every
connection for each request queued and each answer closed; aiohttp's connector keeps idle
connections per host in a queue, and its C parser reads the chunks. The bytes relayed are the
engine's own (no decompression, headers as sent, duplicates kept).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, AsyncIterator, Optional


KEEPALIVE_S = 4.0  # below uvicorn's timeout_keep_alive (5 s), which the engines run with


class UpstreamError(Exception):
    """Base of the three outcomes; ``str()`` names the cause (an exception's type and text)."""


class Unreachable(UpstreamError):
    pass


class Silent(UpstreamError):
    pass


class Cut(UpstreamError):
    pass


def _why(exc: BaseException) -> str:
    import aiohttp

    if isinstance(exc, aiohttp.ClientConnectorError):  # refused, no route, a missing unix socket
        return f"cannot connect: {exc.os_error}"
    if isinstance(exc, asyncio.TimeoutError):
        return f"{type(exc).__name__}: no answer in time"
    return f"{type(exc).__name__}: {exc}".rstrip(": ")


@dataclass
class Answer:
    """A finished small answer (a health check, a document picker's engine call)."""

    status: int
    content_type: str
    body: bytes

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not."""
        return json.loads(self.body)


class Streamed:
    """An answer being received: its head, then :meth:`chunks` as they arrive; :meth:`close`
    (always, shielded) returns a finished connection to the pool and drops an unfinished one."""

    def __init__(self, response: Any) -> None:
        self._response = response
        self.status: int = response.status
        # the head's (name, value) bytes as the engine sent them, a repeated header kept repeated
        self.raw_headers: tuple[tuple[bytes, bytes], ...] = response.raw_headers
        self.content_type: str = response.headers.get("content-type", "")

    async def chunks(self) -> AsyncIterator[bytes]:
        import aiohttp

        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except asyncio.TimeoutError as exc:  # aiohttp's sock_read (stream_idle_timeout_s)
            raise Silent(_why(exc)) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise Cut(_why(exc)) from None

    def close(self) -> None:
        self._response.release()  # aiohttp closes the connection when the answer was not read to its end


class EngineClient:
    """One engine's client: ``base_url`` over TCP, or ``socket`` (a unix socket path), with the
    front door's internal token on every request. Make it on the event loop that uses it."""

    def __init__(self, base_url: str, *, socket: Optional[str] = None, token: Optional[str] = None,
                 connect_timeout_s: float = 5.0) -> None:
        import aiohttp

        # An idle connection is dropped here before the engine drops it (uvicorn closes one idle for
        # 5 s): a POST sent on a connection the engine is closing fails, and would take the replica out.
        connector = aiohttp.UnixConnector(path=socket, limit=0, keepalive_timeout=KEEPALIVE_S) if socket else \
            aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=None, keepalive_timeout=KEEPALIVE_S)
        # identity: the front door reads the usage out of what it relays
        headers = {"Accept-Encoding": "identity", **({"Authorization": f"Bearer {token}"} if token else {})}
        self.connect_timeout_s = connect_timeout_s
        # No environment proxies (aiohttp reads them only with trust_env), no decompression (the
        # engine's bytes are relayed as they are), no read limit unless a request sets one.
        self._session = aiohttp.ClientSession(
            base_url=base_url, connector=connector, headers=headers, trust_env=False, auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, connect=connect_timeout_s, sock_read=None))

    async def get(self, path: str, timeout: float) -> Answer:
        """GET ``path``, the whole answer within ``timeout`` seconds (else :class:`Silent`)."""
        import aiohttp

        try:
            async with self._session.get(path, timeout=aiohttp.ClientTimeout(total=timeout),
                                         allow_redirects=False) as r:
                return Answer(r.status, r.headers.get("content-type", ""), await r.read())
        except asyncio.TimeoutError:
            raise Silent(f"no answer within {timeout:g} s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise Unreachable(_why(exc)) from None

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> Answer:
        """POST and read the whole answer (no read timeout: a long document is embedded slowly)."""
        import aiohttp

        try:
            async with self._session.post(path, data=body, headers=headers, allow_redirects=False) as r:
                return Answer(r.status, r.headers.get("content-type", ""), await r.read())
        except (asyncio.TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise Unreachable(_why(exc)) from None

    async def stream(self, path: str, body: bytes, headers: dict[str, str],
                     idle_timeout: Optional[float] = None) -> Streamed:
        """POST and return once the answer's head is in; ``idle_timeout``: the longest wait for the
        head and between two reads of the body (:class:`Silent` past it)."""
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=None, connect=self.connect_timeout_s, sock_read=idle_timeout)
        try:
            response = await self._session.post(path, data=body, headers=headers, timeout=timeout,
                                                allow_redirects=False)
        except asyncio.TimeoutError as exc:
            connect = getattr(aiohttp, "ConnectionTimeoutError", ())  # 3.10+ (a device's own may be older)
            if idle_timeout is not None and not isinstance(exc, connect):
                raise Silent(_why(exc)) from None
            raise Unreachable(_why(exc)) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise Unreachable(_why(exc)) from None
        return Streamed(response)

    async def aclose(self) -> None:
        await self._session.close()
