"""The audit log that shows tampering: append-only JSONL, each record chained to the one before.

Each line is one record in canonical JSON (sorted keys, no spaces, UTF-8) with ``seq`` (1, 2, …
across files), ``prev`` (the previous record's ``hash``; 64 zeros for the first) and ``hash`` =
sha256 of the canonical JSON of the record without ``hash``. Changing a byte breaks that record's
hash; removing one leaves a gap in ``seq``; inserting one repeats a ``seq`` or breaks the next
``prev``. A record rewritten *with* a recomputed hash still breaks its successor's ``prev``, so a
forger must rewrite everything after it — which the signatures make detectable: when the file
rotates, a ``checkpoint`` record carries HMAC-SHA256 of itself under the box secret (32 random
bytes, 0600, kept apart from the log), and ``<log>.head`` holds the last ``seq``/``hash``, signed
the same way, so cutting records off the end is seen too. Root can read the secret: against root,
forward the records to a SIEM (``syslog``) as they are written.

Metadata only by default; the request's content is written only when ``content=True`` (a profile
that must keep it says so).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import logging.handlers
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from aiboxctl.errors import UsageError

GENESIS = "0" * 64
_TAIL_BYTES = 1 << 16


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def record_hash(record: dict) -> str:
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k != "hash"})).hexdigest()


def _sign(secret: bytes, payload: dict) -> str:
    return hmac.new(secret, canonical(payload), hashlib.sha256).hexdigest()


def box_secret(path: Path, *, create: bool = True) -> bytes | None:
    """The box's signing secret (hex in a 0600 file); made on first use when ``create``."""
    path = Path(path)
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        if not create:
            return None
    except ValueError:
        raise UsageError(f"box secret {path} is not hex", code="invalid_data_file",
                         hint="restore it from backup; a new secret cannot verify old checkpoints") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret.hex() + "\n")
    return secret


def rotated_files(path: Path) -> list[Path]:
    """``audit.jsonl.1``, ``.2``, … oldest first."""
    path = Path(path)
    pattern = re.compile(re.escape(path.name) + r"\.(\d+)$")
    found = [(int(m.group(1)), p) for p in path.parent.glob(path.name + ".*") if (m := pattern.match(p.name))]
    return [p for _, p in sorted(found)]


def _last_record(path: Path) -> dict | None:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - _TAIL_BYTES))
            tail = fh.read()
    except FileNotFoundError:
        return None
    lines = [ln for ln in tail.split(b"\n") if ln.strip()]
    if not lines:
        return None
    try:
        return json.loads(lines[-1])
    except ValueError:
        raise UsageError(f"the last record of {path} is damaged; appending would hide it",
                         code="verification_failed", hint=f"aiboxctl audit verify {path}") from None


class AuditChain:
    """Appends chained records to ``path``; rotates with a signed checkpoint past ``max_bytes``."""

    def __init__(self, path: Path, secret: bytes, *, content: bool = False, max_bytes: int | None = 64 << 20,
                 syslog: str | None = None, now: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.secret = secret
        self.content = content
        self.max_bytes = max_bytes
        self.now = now
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        last = _last_record(self.path)
        if last is None:
            older = rotated_files(self.path)
            last = _last_record(older[-1]) if older else None
        self.seq = int(last["seq"]) if last else 0
        self.last_hash = str(last["hash"]) if last else GENESIS
        self._forward = _syslog_logger(syslog) if syslog else None

    def append(self, event: dict[str, Any], *, content: dict[str, Any] | None = None) -> dict:
        with self._lock:
            record = self._write({"type": "request", **event,
                                  **({"content": content} if self.content and content is not None else {})})
            if self.max_bytes is not None and self.path.stat().st_size >= self.max_bytes:
                self._rotate()
            return record

    def rotate(self) -> Path | None:
        with self._lock:
            return self._rotate()

    def probe(self) -> None:
        """Raises when the log or its signed head cannot be written (opens both for writing, no record)."""
        with self._lock:
            os.close(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))
            self._write_head()

    def _write(self, body: dict[str, Any]) -> dict:
        record = {**body, "seq": self.seq + 1, "time": round(self.now(), 6), "prev": self.last_hash}
        if record["type"] == "checkpoint":
            record["sig"] = _sign(self.secret, record)
        record["hash"] = record_hash(record)
        line = canonical(record) + b"\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)  # one write on O_APPEND: whole lines, even with a second writer
        finally:
            os.close(fd)
        self.seq, self.last_hash = record["seq"], record["hash"]
        self._write_head()
        if self._forward is not None:
            self._forward.info(line[:-1].decode("utf-8"))
        return record

    def _write_head(self) -> None:
        head = {"seq": self.seq, "hash": self.last_hash}
        head["sig"] = _sign(self.secret, head)
        tmp = self.path.with_name(self.path.name + ".head.tmp")
        tmp.write_bytes(canonical(head) + b"\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path.with_name(self.path.name + ".head"))

    def _rotate(self) -> Path | None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return None
        first = _first_seq(self.path)
        self._write({"type": "checkpoint", "first_seq": first, "records": self.seq + 1 - first})
        older = rotated_files(self.path)
        n = int(older[-1].name.rsplit(".", 1)[1]) + 1 if older else 1
        target = self.path.with_name(f"{self.path.name}.{n}")
        os.replace(self.path, target)
        return target


def _first_seq(path: Path) -> int:
    with open(path, "rb") as fh:
        return int(json.loads(fh.readline())["seq"])


def _syslog_logger(address: str) -> logging.Logger:
    """``udp://host:port``, ``tcp://host:port`` or a unix socket path (``/dev/log``: journald)."""
    import socket

    if address.startswith(("udp://", "tcp://")):
        host, _, port = address[6:].rpartition(":")
        target: Any = (host or "127.0.0.1", int(port or 514))
        kind = socket.SOCK_DGRAM if address.startswith("udp") else socket.SOCK_STREAM
    else:
        target, kind = address, None
    handler = logging.handlers.SysLogHandler(address=target, facility=logging.handlers.SysLogHandler.LOG_AUTHPRIV,
                                             socktype=kind)
    handler.setFormatter(logging.Formatter("aiboxctl-audit: %(message)s"))
    logger = logging.getLogger(f"aiboxctl.audit.forward.{address}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    if not logger.handlers:
        logger.addHandler(handler)
    return logger


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    seq: Optional[int]
    kind: str  # changed | removed | inserted | truncated | signature
    message: str


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    files: tuple[str, ...]
    records: int
    checkpoints: int
    last_seq: int
    signatures_checked: bool
    problem: Optional[Problem] = None
    notes: tuple[str, ...] = field(default_factory=tuple)


def _parse(raw: bytes) -> dict | None:
    try:
        rec = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return rec if isinstance(rec, dict) else None


def _intact(raw: bytes, rec: dict | None) -> bool:
    return (rec is not None and isinstance(rec.get("hash"), str) and isinstance(rec.get("seq"), int)
            and rec["hash"] == record_hash(rec) and canonical(rec) == raw)


def verify_chain(files: list[Path], *, secret: bytes | None, head: Path | None = None) -> VerifyResult:
    """Read every record of ``files`` (in order, one chain) and name the first that was changed,
    removed, inserted or cut off. The first file's first record is taken as the anchor when it
    does not start at seq 1 (a single rotated file, or older files removed)."""
    expected: int | None = None
    last_hash: str | None = None
    records = checkpoints = 0
    notes: list[str] = []

    def result(problem: Problem | None) -> VerifyResult:
        return VerifyResult(problem is None, tuple(str(f) for f in files), records, checkpoints,
                            (expected or 1) - 1, secret is not None, problem, tuple(notes))

    for path in files:
        data = Path(path).read_bytes()
        lines = data.split(b"\n")
        ends_clean = data.endswith(b"\n") or not data
        if ends_clean:
            lines = lines[:-1]
        for i, raw in enumerate(lines):
            no = i + 1
            rec = _parse(raw)
            last_line = i == len(lines) - 1
            seq = rec.get("seq") if rec else None
            if not _intact(raw, rec):
                if last_line and not ends_clean:
                    return result(Problem(str(path), no, expected, "truncated",
                                          f"{path} line {no}: the last record is cut short (the file was truncated)"))
                nxt = _parse(lines[i + 1]) if i + 1 < len(lines) else None
                if (nxt is not None and _intact(lines[i + 1], nxt) and nxt.get("prev") == last_hash
                        and nxt.get("seq") == expected):
                    return result(Problem(str(path), no, None, "inserted",
                                          f"{path} line {no}: a record was inserted here (the chain goes on "
                                          f"from line {no - 1} to line {no + 1})"))
                return result(Problem(str(path), no, seq if isinstance(seq, int) else expected, "changed",
                                      f"{path} line {no}: record {seq if isinstance(seq, int) else '?'} was changed "
                                      "(its hash does not match its content)"))
            if expected is None:  # the anchor
                if seq != 1 or rec["prev"] != GENESIS:
                    notes.append(f"the chain starts at seq {seq} (earlier records are in older files)")
            elif seq > expected:
                missing = f"{expected}" if seq == expected + 1 else f"{expected}–{seq - 1}"
                return result(Problem(str(path), no, expected, "removed",
                                      f"{path} line {no}: record(s) {missing} were removed before this line"))
            elif seq < expected:
                return result(Problem(str(path), no, seq, "inserted",
                                      f"{path} line {no}: record {seq} appears again after record {expected - 1}: "
                                      "a record was inserted"))
            elif rec["prev"] != last_hash:
                return result(Problem(str(path), no - 1 if no > 1 else no, seq - 1, "changed",
                                      f"{path} line {max(1, no - 1)}: record {seq - 1} was replaced "
                                      f"(record {seq} does not chain to it)"))
            if rec.get("type") == "checkpoint":
                checkpoints += 1
                if secret is not None:
                    body = {k: v for k, v in rec.items() if k not in ("hash", "sig")}
                    if not hmac.compare_digest(str(rec.get("sig")), _sign(secret, body)):
                        return result(Problem(str(path), no, seq, "signature",
                                              f"{path} line {no}: checkpoint {seq}'s signature is not the box's"))
            records += 1
            expected, last_hash = seq + 1, rec["hash"]
    if head is not None and head.exists():
        h = _parse(head.read_bytes().strip())
        if h is None or not isinstance(h.get("seq"), int):
            return result(Problem(str(head), 1, None, "changed", f"{head}: damaged"))
        if secret is not None and not hmac.compare_digest(
                str(h.get("sig")), _sign(secret, {"seq": h["seq"], "hash": h.get("hash")})):
            return result(Problem(str(head), 1, h["seq"], "signature", f"{head}: signature is not the box's"))
        last = (expected or 1) - 1
        if h["seq"] > last:
            where = str(files[-1]) if files else str(head)
            gone = f"{last + 1}" if h["seq"] == last + 1 else f"{last + 1}–{h['seq']}"
            return result(Problem(where, sum(1 for _ in open(where, "rb")) + 1 if files else 1, last + 1, "truncated",
                                  f"{where}: record(s) {gone} were cut off the end (the last record written was "
                                  f"{h['seq']})"))
        if h["seq"] == last and h.get("hash") != last_hash:
            return result(Problem(str(files[-1]), records, last, "changed",
                                  f"{files[-1]}: the last record {last} is not the one written"))
    if secret is None:
        notes.append("checkpoint signatures not checked (no box secret readable)")
    return result(None)


def verify_log(path: Path, secret: bytes | None, *, single: bool = False) -> VerifyResult:
    """``aiboxctl audit verify``: the whole chain (rotated files, the active file, its head)
    or, with ``single``, one file on its own."""
    path = Path(path)
    if single:
        if not path.exists():
            raise UsageError(f"no audit log at {path}", code="not_found")
        is_active = not re.search(r"\.\d+$", path.name)
        head = path.with_name(path.name + ".head") if is_active else None
        return verify_chain([path], secret=secret, head=head)
    files = rotated_files(path) + ([path] if path.exists() else [])
    if not files:
        raise UsageError(f"no audit log at {path}", code="not_found",
                         hint="the gateway writes it once it serves a request with audit on")
    return verify_chain(files, secret=secret, head=path.with_name(path.name + ".head"))
