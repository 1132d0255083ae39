"""A small client of the appliance's OpenAI-compatible API (httpx), shared by install's smoke
test, ``status``, ``chat`` and ``bench``.

It speaks HTTP only: which endpoint and key an installation has is read by
:mod:`aiboxctl.deploy.endpoint`, and callers hand the :class:`Endpoint` in."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aiboxctl.errors import AiboxError, ServiceDown, VerificationFailed


@dataclass(frozen=True)
class Endpoint:
    url: str  # base URL without /v1, e.g. http://127.0.0.1:8080
    api_key: str | None = None
    model: str | None = None
    key_file: str | None = None
    root_flag: str = ""  # " --root PREFIX" for an installation not at the default place
    ca_file: str | None = None  # HTTPS: the CA to trust (the front door's local CA)
    # HTTPS with the organisation's certificate: ``ca_file`` is the served certificate itself,
    # trusted as it is (pinned), whatever names it covers (this box's tools reach it on loopback)
    pinned: bool = False

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def command(self, name: str) -> str:
        """A follow-up command for this installation (its --root kept), for hints."""
        return f"aiboxctl {name}{self.root_flag}"


def _is_loopback(url: str) -> bool:
    import ipaddress
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _client(timeout: float, url: str, ca_file: str | None = None, pinned: bool = False):
    """httpx sends even 127.0.0.1 through HTTP(S)_PROXY when NO_PROXY does not list it; the
    appliance on this box is never behind a proxy, so loopback ignores the proxy variables.
    ``ca_file``: HTTPS verified against that CA (the installation's own), else the system's."""
    import httpx

    kwargs: dict[str, Any] = {}
    if ca_file:
        import ssl

        ctx = ssl.create_default_context(cafile=ca_file)
        if pinned:  # the exact certificate the front door serves is the trust anchor
            ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
            ctx.check_hostname = False
        kwargs["verify"] = ctx
    return httpx.Client(timeout=httpx.Timeout(timeout, connect=5.0), trust_env=not _is_loopback(url), **kwargs)


def health(endpoint: Endpoint, timeout: float = 3.0) -> tuple[int | None, dict]:
    """(HTTP status or None when nothing answers, JSON body or {})."""
    import httpx

    try:
        with _client(timeout, endpoint.url, endpoint.ca_file, endpoint.pinned) as c:
            r = c.get(f"{endpoint.url}/health", headers=endpoint.headers())
    except httpx.HTTPError:
        return None, {}
    try:
        body = r.json()
    except ValueError:
        body = {}
    return r.status_code, body if isinstance(body, dict) else {}


def served_changes(body: dict) -> dict[str, Any]:
    """The settings the engine serves with that differ from its configuration (the self-test
    fallback's changes, from /health), {} when it serves what was configured."""
    if not body.get("fallback"):
        return {}
    passed = [a for a in body.get("selftest") or [] if a.get("ok")]
    return dict(passed[-1].get("changes") or {}) if passed else {}


def fallback_note(body: dict) -> str | None:
    """One line saying that the engine runs a self-test fallback, what differs from the plan and
    why; None when it serves what was planned. install, status and bench print it."""
    if not body.get("fallback"):
        return None
    changes = ", ".join(f"{k} {v}" for k, v in served_changes(body).items()) or "settings changed"
    return (f"the engine's self-test fell back to '{body['fallback']}' ({body.get('fallback_reason') or 'crashed'}): "
            f"it runs with {changes}, not as planned; the plan's speed figures are for the planned settings")


def wait_healthy(endpoint: Endpoint, timeout: float, alive: Callable[[], str | None] | None = None,
                 interval: float = 0.25) -> dict:
    """Poll /health until 200. ``alive`` returns a reason when the service died for good
    (so a crash fails at once, not after the timeout)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        code, body = health(endpoint)
        if code == 200:
            return body
        last = f"HTTP {code}: {body.get('status') or body.get('detail') or ''}".strip() if code else "no answer"
        if alive is not None:
            reason = alive()
            if reason:
                raise ServiceDown(f"the service is not running: {reason}", hint=endpoint.command("logs"))
        if time.monotonic() >= deadline:
            raise ServiceDown(f"the service did not become healthy within {timeout:.0f} s ({last})",
                              hint=endpoint.command("logs"))
        time.sleep(interval)


@dataclass
class ChatOutcome:
    answer: str
    finish_reason: str | None
    usage: dict[str, Any]
    timings: dict[str, float]
    interrupted: bool = False
    chunks: int = 0
    reasoning: str = ""  # a thinking model's reasoning_content, apart from the answer


@dataclass
class StreamEvent:
    text: str = ""
    done: bool = False
    outcome: ChatOutcome | None = None
    reasoning: str = ""  # a piece of the thinking (delta.reasoning_content)


def empty_reply(outcome: ChatOutcome | None, endpoint: Endpoint) -> VerificationFailed:
    """The error for an answer with no text: a model cut while still thinking says so."""
    if outcome is not None and outcome.reasoning.strip():
        return VerificationFailed(
            f"the model was still thinking when the reply ended (finish_reason {outcome.finish_reason}) "
            "and wrote no answer", code="empty_reply", hint="raise --max-tokens, or ask for less thinking")
    return VerificationFailed("the service returned an empty answer", code="empty_reply",
                              hint=endpoint.command("logs"))


def _raise_for(r, endpoint: Endpoint) -> None:
    if r.status_code in (401, 403):
        raise AiboxError(f"the service refused the API key (HTTP {r.status_code})", code="unauthorized",
                         hint="pass --api-key KEY or run where the installed key file is readable")
    if r.status_code >= 400:
        try:
            r.read()
            detail = r.text[:200]
        except Exception:  # noqa: BLE001 - best effort detail for the message
            detail = ""
        raise VerificationFailed(f"chat request failed: HTTP {r.status_code} {detail}".strip(),
                                 code="request_failed", hint=endpoint.command("status"))


def stream_chat(endpoint: Endpoint, messages: list[dict[str, str]], *, max_tokens: int | None = None,
                temperature: float | None = None, timeout: float = 300.0,
                extra: dict[str, Any] | None = None) -> Iterator[StreamEvent]:
    """Stream one chat completion: yields text deltas, then a final event with the outcome.
    Closing the generator (Ctrl-C in the REPL) closes the connection, which cancels the answer."""
    import httpx

    body: dict[str, Any] = {"model": endpoint.model or "default", "messages": messages, "stream": True,
                            "stream_options": {"include_usage": True}}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if temperature is not None:
        body["temperature"] = temperature
    body.update(extra or {})
    parts: list[str] = []
    thoughts: list[str] = []
    usage: dict[str, Any] = {}
    finish = None
    chunks = 0
    t0 = time.perf_counter()
    t_first = t_last = None
    try:
        with _client(timeout, endpoint.url, endpoint.ca_file, endpoint.pinned) as c, c.stream("POST", f"{endpoint.url}/v1/chat/completions", json=body,
                                             headers=endpoint.headers()) as r:
            _raise_for(r, endpoint)
            for line in r.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    continue
                if chunk.get("error"):
                    raise VerificationFailed(f"chat request failed: {chunk['error']}", code="request_failed")
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or []:
                    fields = choice.get("delta") or {}
                    delta = fields.get("content") or ""
                    thought = fields.get("reasoning_content") or ""
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
                    if thought:
                        now = time.perf_counter()
                        t_first = t_first or now
                        t_last = now
                        chunks += 1
                        thoughts.append(thought)
                        yield StreamEvent(reasoning=thought)
                    if delta:
                        now = time.perf_counter()
                        t_first = t_first or now
                        t_last = now
                        chunks += 1
                        parts.append(delta)
                        yield StreamEvent(text=delta)
    except httpx.ConnectError as exc:
        raise ServiceDown(f"the service at {endpoint.url} is not answering", hint=endpoint.command("status")) from exc
    except httpx.HTTPError as exc:
        raise VerificationFailed(f"chat request failed: {type(exc).__name__}: {exc}", code="request_failed",
                                 hint=endpoint.command("status")) from exc
    t_end = time.perf_counter()
    completion = int(usage.get("completion_tokens") or chunks)
    timings = {"total_s": t_end - t0}
    if t_first is not None:
        timings["ttft_s"] = t_first - t0
        if completion > 1 and t_last and t_last > t_first:
            timings["decode_tok_s"] = (completion - 1) / (t_last - t_first)
        timings["tok_s"] = completion / max(t_end - t0, 1e-9)
    yield StreamEvent(done=True, outcome=ChatOutcome("".join(parts), finish, usage, timings, chunks=chunks,
                                                     reasoning="".join(thoughts)))


def chat_once(endpoint: Endpoint, messages: list[dict[str, str]], *,
              on_text: Callable[[str], None] | None = None,
              on_reasoning: Callable[[str], None] | None = None, **kwargs: Any) -> ChatOutcome:
    """One streamed completion; ``on_text`` sees each answer delta, ``on_reasoning`` each piece
    of a thinking model's reasoning. Raises VerificationFailed when the answer is empty."""
    outcome = None
    for event in stream_chat(endpoint, messages, **kwargs):
        if event.reasoning and on_reasoning:
            on_reasoning(event.reasoning)
        if event.text and on_text:
            on_text(event.text)
        if event.done:
            outcome = event.outcome
    if outcome is None or not outcome.answer.strip():
        raise empty_reply(outcome, endpoint)
    return outcome


def complete_raw(endpoint: Endpoint, body: dict[str, Any], timeout: float = 300.0) -> dict[str, Any]:
    """A non-streamed completion (bench uses it for usage counts)."""
    import httpx

    try:
        with _client(timeout, endpoint.url, endpoint.ca_file, endpoint.pinned) as c:
            r = c.post(f"{endpoint.url}/v1/chat/completions", json=body, headers=endpoint.headers())
    except httpx.ConnectError as exc:
        raise ServiceDown(f"the service at {endpoint.url} is not answering", hint=endpoint.command("status")) from exc
    _raise_for(r, endpoint)
    return r.json()


__all__ = ["Endpoint", "ChatOutcome", "StreamEvent", "empty_reply", "health", "served_changes", "fallback_note", "wait_healthy", "stream_chat", "chat_once",
           "complete_raw"]
