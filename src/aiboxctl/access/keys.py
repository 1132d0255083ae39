"""API keys of the front door: the key file, its management and the live key ring.

A key is ``sk-aibox-<id>-<secret>``: ``id`` (12 hex digits) is public and finds the record, the
secret is 32 random bytes (256 bits). The file stores, per key, a random 16-byte salt and
HMAC-SHA256(salt, key) — never the key. A slow password hash (scrypt) protects guessable
passwords; a 256-bit random key cannot be guessed, so a keyed fast hash loses nothing and keeps
a check at microseconds per request (the front door checks every request). The per-key salt
means equal keys never hash alike and no precomputed table applies. Comparison is
``hmac.compare_digest``; an unknown id still costs one HMAC, so timing does not tell ids apart.

The file is JSON, written whole to a temporary file (0600) and renamed over the old one under a
lock, so a reader sees the old or the new file, never half. :class:`KeyRing` re-reads it when
its (inode, mtime, size) changes: ``keys revoke`` takes effect on the next request, no restart.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Optional

from aiboxctl.access.refusal import AccessDenied
from aiboxctl.errors import AiboxError, UsageError

PREFIX = "sk-aibox-"
_ID_LEN = 12
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
FILE_VERSION = 1


@dataclass(frozen=True)
class KeyRecord:
    """One key as stored: everything but the secret."""

    name: str
    key_id: str
    salt: str  # hex
    hash: str  # hex HMAC-SHA256(salt, full key)
    created_at: float
    models: tuple[str, ...] = ()  # empty: every model
    department: Optional[str] = None
    expires_at: Optional[float] = None
    rpm: Optional[int] = None
    tokens_per_day: Optional[int] = None
    concurrency: Optional[int] = None
    admin: bool = False
    revoked_at: Optional[float] = None
    rotated_at: Optional[float] = None

    def state(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"

    def allows(self, model: str) -> bool:
        return not self.models or model in self.models

    def public(self, now: float) -> dict:
        """What ``keys list`` shows: no salt, no hash."""
        d = {k: v for k, v in asdict(self).items() if k not in ("salt", "hash")}
        d["models"] = list(self.models)
        d["state"] = self.state(now)
        return d


@dataclass(frozen=True)
class IssuedKey:
    """A key just made: the only moment its secret exists outside the client."""

    record: KeyRecord
    secret: str


@dataclass(frozen=True)
class KeyLimits:
    models: tuple[str, ...] = ()
    department: Optional[str] = None
    expires_at: Optional[float] = None
    rpm: Optional[int] = None
    tokens_per_day: Optional[int] = None
    concurrency: Optional[int] = None
    admin: bool = False


def _digest(salt: bytes, token: str) -> str:
    return hmac.new(salt, token.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()


def _new_secret(name: str, now: float, limits: KeyLimits) -> IssuedKey:
    key_id = secrets.token_hex(_ID_LEN // 2)
    token = f"{PREFIX}{key_id}-{secrets.token_urlsafe(32)}"
    salt = secrets.token_bytes(16)
    record = KeyRecord(name=name, key_id=key_id, salt=salt.hex(), hash=_digest(salt, token), created_at=now,
                       **asdict(limits))
    return IssuedKey(record, token)


def split_token(token: str) -> str | None:
    """The public id of a well-formed key, else None."""
    if not token.startswith(PREFIX) or len(token) < len(PREFIX) + _ID_LEN + 2:
        return None
    key_id = token[len(PREFIX):len(PREFIX) + _ID_LEN]
    if token[len(PREFIX) + _ID_LEN] != "-" or not all(c in "0123456789abcdef" for c in key_id):
        return None
    return key_id


def legacy_id(token: str) -> str:
    """The record id of an imported wave-1 key (any string, not ``sk-aibox-<id>-…``): a prefix of its
    sha256, so the front door finds the record without the id being part of the key."""
    return "legacy-" + hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def record_id(token: str) -> str:
    return split_token(token) or legacy_id(token)


class KeyStore:
    """The key file: read, and changed under a lock (the CLI side)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self) -> tuple[KeyRecord, ...]:
        return load_records(self.path)

    def _lock(self):
        from filelock import FileLock

        self.path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.path) + ".lock", timeout=30)

    def _save(self, records: list[KeyRecord]) -> None:
        doc = {"version": FILE_VERSION, "keys": [asdict(r) | {"models": list(r.models)} for r in records]}
        data = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
        owner = None
        try:
            st = self.path.stat()
            owner = (st.st_uid, st.st_gid)
        except FileNotFoundError:
            pass
        fd, tmp = tempfile.mkstemp(prefix=".keys-", dir=self.path.parent)
        try:
            os.fchmod(fd, 0o600)
            if owner is not None and os.geteuid() == 0:
                os.fchown(fd, *owner)  # the service user keeps reading it
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def add(self, name: str, limits: KeyLimits, *, now: float) -> IssuedKey:
        if not _NAME.match(name):
            raise UsageError(f"key name {name!r} is not valid",
                             hint="letters, digits and . _ @ - (up to 64), starting with a letter or digit")
        for label, value in (("--rpm", limits.rpm), ("--tokens-per-day", limits.tokens_per_day),
                             ("--concurrency", limits.concurrency)):
            if value is not None and value < 1:
                raise UsageError(f"{label} must be at least 1 (got {value})", hint=f"omit {label} for no limit")
        with self._lock():
            records = list(self.load())
            existing = next((r for r in records if r.name == name), None)
            if existing is not None and existing.revoked_at is None:
                raise UsageError(f"a key named {name!r} exists", hint=f"aiboxctl keys rotate {name}")
            issued = _new_secret(name, now, limits)
            records = [r for r in records if r.name != name] + [issued.record]
            self._save(records)
        return issued

    def import_key(self, name: str, token: str, limits: KeyLimits, *, now: float) -> KeyRecord | None:
        """Keep an existing secret (a wave-1 plaintext key) as a named key: only its salted hash is
        stored. None when a key with that secret is already in the file."""
        if not _NAME.match(name):
            raise UsageError(f"key name {name!r} is not valid", hint="letters, digits and . _ @ -")
        with self._lock():
            records = list(self.load())
            key_id = record_id(token)
            if any(r.key_id == key_id for r in records):
                return None
            if any(r.name == name and r.revoked_at is None for r in records):
                raise UsageError(f"a key named {name!r} exists", hint="import it under another name")
            salt = secrets.token_bytes(16)
            record = KeyRecord(name=name, key_id=key_id, salt=salt.hex(), hash=_digest(salt, token), created_at=now,
                               **asdict(limits))
            self._save([r for r in records if r.name != name] + [record])
        return record

    def _change(self, name: str, fn: Callable[[KeyRecord], KeyRecord]) -> KeyRecord:
        with self._lock():
            records = list(self.load())
            for i, r in enumerate(records):
                if r.name == name:
                    records[i] = fn(r)
                    self._save(records)
                    return records[i]
        raise AiboxError(f"no key named {name!r} in {self.path}", code="not_found", hint="aiboxctl keys list")

    def revoke(self, name: str, *, now: float) -> KeyRecord:
        return self._change(name, lambda r: r if r.revoked_at is not None else replace(r, revoked_at=now))

    def rotate(self, name: str, *, now: float) -> IssuedKey:
        issued: list[IssuedKey] = []

        def swap(r: KeyRecord) -> KeyRecord:
            if r.revoked_at is not None:
                raise UsageError(f"key {name!r} is revoked", hint=f"aiboxctl keys add {name} (a new key)")
            fresh = _new_secret(name, now, KeyLimits())
            new = replace(r, key_id=fresh.record.key_id, salt=fresh.record.salt, hash=fresh.record.hash,
                          rotated_at=now)
            issued.append(IssuedKey(new, fresh.secret))
            return new

        self._change(name, swap)
        return issued[0]


def load_records(path: Path) -> tuple[KeyRecord, ...]:
    try:
        raw = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return ()
    try:
        doc = json.loads(raw)
        if doc.get("version") != FILE_VERSION:
            raise ValueError(f"version {doc.get('version')!r}")
        return tuple(KeyRecord(**(k | {"models": tuple(k.get("models") or ())})) for k in doc["keys"])
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise UsageError(f"key file {path} is not a valid aiboxctl key file ({type(exc).__name__}: {exc})",
                         code="invalid_data_file", hint="restore it from backup, or move it away and add keys again") \
            from None


class KeyRing:
    """The keys as the front door sees them, re-read when the file changes.

    ``authenticate`` answers who is asking (or raises 401/403); ``authorize`` whether that key
    may use a model (403). The stat check costs one ``os.stat`` per request."""

    def __init__(self, path: Path, *, now: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.now = now
        self._lock = threading.Lock()
        # (file stamp, records by id), replaced whole so that one read gives a matching pair
        self._loaded: tuple[object, dict[str, KeyRecord]] = (object(), {})  # never read yet
        self._dummy_salt = secrets.token_bytes(16)

    def _stamp_now(self) -> tuple | None:
        try:
            st = os.stat(self.path)
            return (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            return None

    def _current(self) -> dict[str, KeyRecord]:
        stamp = self._stamp_now()
        if stamp != self._loaded[0]:
            with self._lock:
                if stamp != self._loaded[0]:
                    records = load_records(self.path) if stamp else ()
                    self._loaded = (stamp, {r.key_id: r for r in records})
        return self._loaded[1]

    def authenticate_nowait(self, authorization: str | None) -> KeyRecord | None:
        """``authenticate`` without reading the file (one ``os.stat``), for the event loop: None
        when the file changed since it was read (``authenticate`` then re-reads it)."""
        stamp, by_id = self._loaded
        try:
            if self._stamp_now() != stamp:
                return None
        except OSError:  # unreadable: authenticate says so
            return None
        return self.authenticate(authorization, by_id)

    def authenticate(self, authorization: str | None, records: dict[str, KeyRecord] | None = None) -> KeyRecord:
        """``records``: the keys by id as last read (``authenticate_nowait``); None: re-read the
        file first when it changed."""
        if not authorization:
            raise AccessDenied(401, "You didn't provide an API key: send 'Authorization: Bearer sk-aibox-…'",
                               code="missing_api_key")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        key_id = record_id(token) if scheme.lower() == "bearer" and token else None
        by_id = self._current() if records is None else records
        record = by_id.get(key_id) if key_id else None
        # One HMAC whether or not the id exists: an unknown id takes as long as a wrong secret.
        salt = bytes.fromhex(record.salt) if record else self._dummy_salt
        good = hmac.compare_digest(_digest(salt, token), record.hash if record else "0" * 64)
        if record is None or not good:
            raise AccessDenied(401, "Incorrect API key provided", code="invalid_api_key")
        state = record.state(self.now())
        if state != "active":
            raise AccessDenied(401, f"API key '{record.name}' is {state}", code=f"{state}_api_key")
        return record

    def authorize(self, record: KeyRecord, model: str) -> None:
        if not record.allows(model):
            raise AccessDenied(403, f"API key '{record.name}' may not use model '{model}' "
                                    f"(allowed: {', '.join(record.models)})", code="model_not_allowed", param="model")

    def require_admin(self, record: KeyRecord) -> None:
        if not record.admin:
            raise AccessDenied(403, f"API key '{record.name}' is not an admin key", code="admin_required")
