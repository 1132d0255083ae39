"""API keys (Bearer auth, constant-time compare) and the audit log of request metadata.

Keys file: one key per line, optionally ``id:key``; blank lines and ``#`` comments ignored.
Keys are never logged or written to the audit log; the audit log names the key's id
(the ``id:`` prefix, else ``key<line number>``), and a rejected key by its fingerprint.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiboxctl.errors import UsageError


@dataclass(frozen=True)
class ApiKey:
    id: str
    secret: bytes


class KeyRing:
    def __init__(self, keys: list[ApiKey]) -> None:
        self.keys = keys

    @classmethod
    def load(cls, path: Path) -> "KeyRing":
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise UsageError(f"API keys file not found: {path}",
                             hint="create it (one key per line) or set api_keys_file: null") from None
        keys: list[ApiKey] = []
        for no, raw in enumerate(lines, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            key_id, sep, secret = line.partition(":")
            if not sep:
                key_id, secret = f"key{no}", line
            key_id, secret = key_id.strip(), secret.strip()
            if not secret:
                raise UsageError(f"{path} line {no}: empty key")
            keys.append(ApiKey(key_id, secret.encode("utf-8")))
        if not keys:
            raise UsageError(f"API keys file {path} holds no key", hint="add one key per line")
        return cls(keys)

    def check(self, authorization: str | None) -> str | None:
        """The id of the key in an ``Authorization: Bearer`` header, or None.

        Every configured key is compared (hmac.compare_digest), so the time taken does not
        depend on which key, or how much of one, matched."""
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return None
        given = token.strip().encode("utf-8")
        found: str | None = None
        for key in self.keys:
            if hmac.compare_digest(given, key.secret) and found is None:
                found = key.id
        return found


def key_fingerprint(authorization: str | None) -> str | None:
    """A short, stable name for a presented credential that the audit log may hold: the first
    12 hex digits of the sha256 of the Bearer token (of the whole header when it is not Bearer).
    The same wrong key always maps to the same fingerprint, so repeated attempts can be told
    apart and an operator can check a suspected key (``sha256sum``), while the secret itself
    is never written. None when nothing was presented."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    material = token.strip() if scheme.lower() == "bearer" else authorization
    return "sha256:" + hashlib.sha256(material.encode("utf-8", "surrogateescape")).hexdigest()[:12]


class AuditLog:
    """Append-only JSONL of request metadata (and content only when audit_content)."""

    def __init__(self, path: Path, *, content: bool) -> None:
        self.path = Path(path)
        self.content = content
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any], *, prompt: Any = None, completion: str | None = None) -> None:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **record}
        if self.content:
            entry["prompt"] = prompt
            entry["completion"] = completion
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as fh:  # reopen: logrotate-friendly
            fh.write(line)
