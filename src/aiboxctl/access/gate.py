"""What the front door calls for each request: ``admit`` before it reaches an engine, ``finish``
after the answer (or the refusal). Plain Python over the key ring, the limiter, the ledger and
the audit chain; the gateway adapts it to HTTP (the gateway's ``access`` module).

admit:  authenticate (401) → model allowed (403) → limits (429) → a reservation held
finish: settle the reservation with the engine's usage → ledger row (acknowledged: fsynced) →
        audit record

Fail closed: when the ledger or the audit chain cannot be written, ``finish`` raises
:class:`NotRecorded` (the front door then never sends the answer's end, so nothing unrecorded is
acknowledged) and ``admit`` refuses governed requests with 503 until a probe write succeeds
(at most one probe per ``PROBE_INTERVAL_S``); :meth:`AccessControl.problems` says why, for /health.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from aiboxctl.access.audit import AuditChain, box_secret
from aiboxctl.access.keys import KeyRecord, KeyRing
from aiboxctl.access.ledger import Ledger, UsageRecord
from aiboxctl.access.limits import Limiter, Ticket
from aiboxctl.access.refusal import AccessDenied

DEFAULT_RESERVE_TOKENS = 1024  # when a request names no max_tokens
PROBE_INTERVAL_S = 1.0  # while failing, how often admit or /health retries a write


class NotRecorded(Exception):
    """The ledger row or the audit record of a finished request could not be written."""


@dataclass(frozen=True)
class AccessSettings:
    keys_file: Path
    ledger_file: Optional[Path] = None
    audit_file: Optional[Path] = None
    secret_file: Optional[Path] = None
    audit_content: bool = False
    audit_max_bytes: int = 64 << 20
    syslog: Optional[str] = None  # udp://host:514, tcp://host:port, /dev/log
    default_reserve_tokens: int = DEFAULT_RESERVE_TOKENS


@dataclass(frozen=True)
class Admission:
    key: KeyRecord
    ticket: Ticket
    model: str
    endpoint: str
    arrived: float
    # the request's text (messages / prompt / input), kept only when the audit records content
    request_content: Optional[dict[str, Any]] = None


def reservation(body: dict[str, Any], body_bytes: int, default: int = DEFAULT_RESERVE_TOKENS) -> int:
    """Tokens to hold for a request until its usage is known: what it may generate plus an upper
    estimate of its prompt (about one token per 2 bytes of JSON; settlement corrects it)."""
    cap = body.get("max_completion_tokens", body.get("max_tokens"))
    out = cap if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0 else default
    return int(out) + body_bytes // 2


def fingerprint(authorization: str | None) -> str | None:
    """A presented but unknown credential, named without the secret (first 12 hex of sha256)."""
    if not authorization:
        return None
    token = authorization.partition(" ")[2].strip() or authorization
    return "sha256:" + hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()[:12]


class AccessControl:
    def __init__(self, settings: AccessSettings, *, now: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.now = now
        self.keys = KeyRing(settings.keys_file, now=now)
        self.ledger = Ledger(settings.ledger_file) if settings.ledger_file else None
        self.limiter = Limiter(now=now, used_today=self.ledger.tokens_since if self.ledger else None)
        self.audit = None
        if settings.audit_file:
            secret = box_secret(settings.secret_file or Path(settings.audit_file).with_name("box-secret"))
            self.audit = AuditChain(settings.audit_file, secret, content=settings.audit_content,
                                    max_bytes=settings.audit_max_bytes, syslog=settings.syslog, now=now)
        self.audit_failure: str | None = None
        self._probed = float("-inf")

    def problems(self, *, probe: bool = True) -> tuple[str, ...]:
        """Why requests cannot be recorded now (empty: they can). While failing, ``probe`` retries
        one write of each failing store (at most once per PROBE_INTERVAL_S)."""
        if probe and self.failing() and time.monotonic() - self._probed >= PROBE_INTERVAL_S:
            self._probed = time.monotonic()
            if self.ledger is not None and self.ledger.failure:
                self.ledger.probe()
            if self.audit is not None and self.audit_failure:
                try:
                    self.audit.probe()
                    self.audit_failure = None
                except Exception as exc:  # noqa: BLE001 - why, for /health
                    self.audit_failure = f"{type(exc).__name__}: {exc}"
        out = []
        if self.ledger is not None and self.ledger.failure:
            out.append(f"usage ledger {self.ledger.path} cannot be written ({self.ledger.failure})")
        if self.audit is not None and self.audit_failure:
            out.append(f"audit log {self.audit.path} cannot be written ({self.audit_failure})")
        return tuple(out)

    def failing(self) -> bool:
        """Is a store (ledger, audit) failing now? (no I/O)"""
        return bool((self.ledger is not None and self.ledger.failure) or self.audit_failure)

    def admit(self, authorization: str | None, model: str, endpoint: str, reserve_tokens: int = 0) -> Admission:
        arrived = self.now()
        key: KeyRecord | None = None
        try:
            key = self.keys.authenticate(authorization)
            self.keys.authorize(key, model)
            if self.failing() and (problems := self.problems()):  # fail closed: nothing unrecorded is served
                raise AccessDenied(503, f"requests cannot be recorded: {'; '.join(problems)}; refused until they "
                                   "can (aiboxctl status)", code="recording_unavailable", type_="server_error",
                                   retry_after=5, limit="recording")
            ticket = self.limiter.admit(key, reserve_tokens)
        except AccessDenied as denied:
            self._denied(denied, key, authorization, model, endpoint, arrived)
            raise
        return Admission(key, ticket, model, endpoint, arrived)

    def admit_nowait(self, authorization: str | None, model: str, endpoint: str,
                     reserve_tokens: int = 0) -> Admission | None:
        """``admit`` without blocking I/O, for the front door's event loop (no thread hop per
        request): the admission when ``admit`` would admit and needs nothing but memory and one
        ``os.stat``. None — nothing done, nothing recorded — when ``admit`` would read or write:
        the key file changed since it was read, a store is failing (the probe writes), the key's
        day is not counted yet (the ledger is asked), or the request would be refused (a refusal
        is recorded in the ledger and the audit). The caller then runs ``admit`` in a thread."""
        arrived = self.now()
        if self.failing():
            return None
        try:
            key = self.keys.authenticate_nowait(authorization)
        except AccessDenied:
            return None
        if key is None or not key.allows(model):
            return None
        ticket = self.limiter.admit_nowait(key, reserve_tokens)
        return None if ticket is None else Admission(key, ticket, model, endpoint, arrived)

    def _denied(self, denied: AccessDenied, key: KeyRecord | None, authorization: str | None, model: str,
                endpoint: str, arrived: float) -> None:
        # A refusal is answered whether or not it can be recorded (a failure shows in problems()).
        if key is not None and self.ledger is not None and not (denied.limit == "recording" and self.ledger.failure):
            try:
                self.ledger.record(UsageRecord(arrived, key.name, key.department, model, endpoint, denied.status))
            except Exception:  # noqa: BLE001 - Ledger.failure says why
                pass
        if self.audit is not None and not (denied.limit == "recording" and self.audit_failure):
            who = {"key": key.name, "department": key.department} if key else {"key_fingerprint": fingerprint(authorization)}
            try:
                self._audit({"event": "denied", **who, "model": model, "endpoint": endpoint,
                             "status": denied.status, "code": denied.code, "limit": denied.limit})
            except NotRecorded:
                pass

    def _audit(self, event: dict[str, Any], content: dict[str, Any] | None = None) -> None:
        assert self.audit is not None
        try:
            self.audit.append(event, content=content)
        except Exception as exc:  # noqa: BLE001 - disk full, a read-only file, a folder in its place…
            self.audit_failure = f"{type(exc).__name__}: {exc}"
            raise NotRecorded(f"audit log {self.audit.path} cannot be written ({self.audit_failure})") from exc
        self.audit_failure = None

    def finish(self, admission: Admission, status: int, *, prompt_tokens: int = 0, completion_tokens: int = 0,
               content: dict[str, Any] | None = None) -> None:
        """Settle, record (returns once the ledger row is fsynced) and audit one request; raises
        NotRecorded when either cannot be written (the reservation is settled all the same)."""
        used = max(0, int(prompt_tokens)) + max(0, int(completion_tokens))
        self.limiter.settle(admission.ticket, used)
        duration_ms = round((self.now() - admission.arrived) * 1000.0, 3)
        k = admission.key
        if self.ledger is not None:
            try:
                self.ledger.record(UsageRecord(admission.arrived, k.name, k.department, admission.model,
                                               admission.endpoint, int(status), int(prompt_tokens),
                                               int(completion_tokens), duration_ms))
            except Exception as exc:  # noqa: BLE001 - Ledger.failure keeps why
                raise NotRecorded(f"usage ledger {self.ledger.path} cannot be written "
                                  f"({type(exc).__name__}: {exc})") from exc
        if self.audit is not None:
            self._audit({"event": "request", "key": k.name, "department": k.department,
                         "model": admission.model, "endpoint": admission.endpoint, "status": int(status),
                         "prompt_tokens": int(prompt_tokens), "completion_tokens": int(completion_tokens),
                         "duration_ms": duration_ms}, content)

    def close(self) -> None:
        if self.ledger is not None:
            self.ledger.close()
