"""``GatewayConfig``: what ``aiboxctl gateway`` needs, read from gateway.yaml.

Validation is pydantic's through :mod:`aiboxctl.datafile` (unknown keys are errors, every
problem names file, line and field); the cross-field rules (unique names, one role per model,
loopback-only engines) are checked here and reported the same way. The install side renders
this file; its keys are the field names below.

```yaml
host: 0.0.0.0            # the only process bound beyond loopback
port: 8080
internal_token_file: /etc/aibox/engine-keys   # the key the engines trust (engine api_keys_file format)
queue_depth: 32          # requests waiting per model when every replica's slots are busy
queue_timeout_s: 30      # then 429 with Retry-After
health_failures: 3       # health checks timed out in a row (nothing relayed meanwhile): the replica
                         # is hung, out, and the answers in flight on it end (502 / an SSE error event)
stream_idle_timeout_s: null   # a stream silent this long is ended the same way (null: no limit;
                         # a long prompt's prefill is silent too: set it above the longest one)
engines:
  - name: chat-0
    role: chat           # chat | embedding | rerank
    models: [qwen2.5-7b-instruct]
    url: http://127.0.0.1:8101      # or socket: /run/aibox/chat-0.sock
    group: chat          # replica group (default: the first model's name)
# governed access (docs/access.md); absent: every client is admitted (loopback use)
access_dir: /var/lib/aibox/access   # keys.json, usage.db, access-audit.jsonl, box-secret in one folder
keys_file: /etc/aibox/keys.json     # or each file on its own (overrides access_dir's)
ledger_file: /var/lib/aibox/usage.db
audit_file: /var/log/aibox/access-audit.jsonl
secret_file: /etc/aibox/box-secret
audit_content: false     # the request and answer text in the audit log
syslog: udp://siem:514   # forward each audit record (udp://, tcp://, /dev/log)
tls_dir: /etc/aibox/tls  # server.crt + server.key: serve HTTPS
loopback_port: 9080      # with tls_dir: plain HTTP on 127.0.0.1 for this box's own tools
                         # (absent: port + 1000; 0: none)
```
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, Optional
from urllib.parse import urlsplit

from pydantic import ConfigDict, Field, with_config

from aiboxctl.datafile import Document, FieldProblem, raise_problems, read_document, validate
from aiboxctl.errors import UsageError

if TYPE_CHECKING:
    from aiboxctl.access.gate import AccessSettings

Role = Literal["chat", "embedding", "rerank"]  # engine_settings.ROLES, as a type pydantic checks

_STRICT = ConfigDict(extra="forbid")
_Name = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@/+-]*$")]
_Seconds = Annotated[float, Field(gt=0, le=3600)]


@with_config(_STRICT)
@dataclass(frozen=True)
class EngineEntry:
    """One engine instance behind the front door."""

    name: _Name
    models: Annotated[tuple[_Name, ...], Field(min_length=1)]
    role: Role = "chat"
    url: Optional[str] = None  # http://127.0.0.1:PORT (loopback only)
    socket: Optional[str] = None  # a unix socket path instead of url
    group: Optional[_Name] = None  # replica group; default the first model's name

    @property
    def replica_group(self) -> str:
        return self.group or self.models[0]

    @property
    def base_url(self) -> str:
        """The URL the engine's client is given (a unix socket is reached through its connector)."""
        return "http://localhost" if self.socket else str(self.url).rstrip("/")


@with_config(_STRICT)
@dataclass(frozen=True)
class GatewayConfig:
    engines: Annotated[tuple[EngineEntry, ...], Field(min_length=1)]
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8080
    # The token sent as Bearer to every engine: a file in the engine's api_keys_file format
    # (the first key; ``id:key`` or a bare key). None: the engines run without keys.
    internal_token_file: Optional[Path] = None
    queue_depth: Annotated[int, Field(ge=0, le=100_000)] = 32  # per model
    queue_timeout_s: _Seconds = 30.0
    retry_after_s: Annotated[int, Field(ge=1, le=3600)] = 2  # 429/503 Retry-After
    health_interval_s: _Seconds = 2.0  # how often each engine's /health is polled
    health_timeout_s: _Seconds = 2.0
    # Health checks that time out in a row before a replica is taken out (a busy engine answers
    # /health late; a refused connection or a not-ok answer takes it out at once).
    health_failures: Annotated[int, Field(ge=1, le=100)] = 3
    # The longest a stream may go without a byte from its engine (its head included, so a long
    # prompt's prefill counts) before the front door ends it as an unresponsive engine's (an SSE
    # error event, or 502 before the head). None: no limit; a hung engine's streams are still ended
    # when the health checks take it out. Answers that are not streams come whole and are not limited.
    stream_idle_timeout_s: Optional[_Seconds] = None
    connect_timeout_s: _Seconds = 5.0
    # How many more requests in flight the replica holding a conversation's prefix may have
    # than the least busy one before the conversation moves (its prefix is recomputed there).
    affinity_slack: Annotated[int, Field(ge=0, le=1024)] = 1
    max_body_bytes: Annotated[int, Field(ge=1024)] = 32 << 20
    # Governed access (issue 16): on when a keys file is named (keys_file, or access_dir/keys.json).
    access_dir: Optional[Path] = None
    keys_file: Optional[Path] = None
    ledger_file: Optional[Path] = None
    audit_file: Optional[Path] = None
    secret_file: Optional[Path] = None
    audit_content: bool = False
    syslog: Optional[Annotated[str, Field(pattern=r"^(udp://|tcp://|/)")]] = None
    tls_dir: Optional[Path] = None  # server.crt and server.key (aiboxctl tls init): HTTPS
    # With TLS: the same app also serves plain HTTP on 127.0.0.1 at this port, for this box's own
    # tools (chat, bench, status, health checks, a local web UI) while the LAN gets HTTPS only.
    # Absent: default_loopback_port(port); 0: no plain listener.
    loopback_port: Optional[Annotated[int, Field(ge=0, le=65535)]] = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls_dir else "http"

    @property
    def plain_loopback_port(self) -> int | None:
        """The port of the plain-HTTP listener on 127.0.0.1 beside HTTPS, or None (no TLS, or off)."""
        return effective_loopback_port(self.port, self.tls_dir is not None, self.loopback_port)

    def access_files(self) -> dict[str, Optional[Path]]:
        """keys, ledger, audit and secret files: each its own key, else its name in access_dir."""
        d = self.access_dir
        names = {"keys_file": "keys.json", "ledger_file": "usage.db", "audit_file": "access-audit.jsonl",
                 "secret_file": "box-secret"}
        return {k: getattr(self, k) or (d / n if d else None) for k, n in names.items()}

    def access_settings(self) -> "AccessSettings | None":
        """The access library's settings, or None when access is off (no keys file)."""
        from aiboxctl.access.gate import AccessSettings

        files = self.access_files()
        if files["keys_file"] is None:
            return None
        return AccessSettings(keys_file=files["keys_file"], ledger_file=files["ledger_file"],
                              audit_file=files["audit_file"], secret_file=files["secret_file"],
                              audit_content=self.audit_content, syslog=self.syslog)

    def internal_token(self) -> str | None:
        return read_token(self.internal_token_file) if self.internal_token_file else None

    def models(self) -> dict[str, list[EngineEntry]]:
        """Every model served, with the engines (replicas) that serve it, in file order."""
        out: dict[str, list[EngineEntry]] = {}
        for e in self.engines:
            for m in e.models:
                out.setdefault(m, []).append(e)
        return out


LOOPBACK_PORT_OFFSET = 1000  # 8080 → 9080: clear of the engines, which take port + 1, + 2, …
LOOPBACK_HOST = "127.0.0.1"


def default_loopback_port(port: int) -> int:
    """Where plain HTTP for this box's own tools listens beside HTTPS on ``port``: port + 1000
    (port − 1000 above 64535). Not port + 1: install puts the engines there."""
    return port + LOOPBACK_PORT_OFFSET if port + LOOPBACK_PORT_OFFSET <= 65535 else port - LOOPBACK_PORT_OFFSET


def effective_loopback_port(port: int, tls: bool, loopback_port: int | None) -> int | None:
    """gateway.yaml's ``loopback_port`` as served: None without TLS (the port itself is plain) or when 0."""
    if not tls or loopback_port == 0:
        return None
    return loopback_port if loopback_port is not None else default_loopback_port(port)


def read_token(path: Path) -> str:
    """The first key of an engine keys file (``id:key`` or a bare key per line, ``#`` comments):
    the gateway can read the very file the engines trust."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UsageError(f"internal token file not found: {path}",
                         hint="create it (the engines' api_keys_file) or set internal_token_file: null") from None
    for raw in lines:
        line = raw.strip()
        if line and not line.startswith("#"):
            _, sep, secret = line.partition(":")
            token = (secret if sep else line).strip()
            if token:
                return token
    raise UsageError(f"internal token file {path} holds no key", hint="write one key per line (id:key)")


def _url_port(url: str) -> int | None:
    try:
        return urlsplit(url).port
    except ValueError:
        return None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _cross_checks(cfg: GatewayConfig, doc: Document) -> list[FieldProblem]:
    problems: list[FieldProblem] = []
    seen: dict[str, int] = {}
    role_of: dict[str, str] = {}
    group_of: dict[str, tuple[str, tuple[str, ...]]] = {}
    for i, e in enumerate(cfg.engines):
        at = ("engines", i)
        if e.name in seen:
            problems.append(doc.problem((*at, "name"), f"duplicate engine name (also engines[{seen[e.name]}])"))
        seen.setdefault(e.name, i)
        if (e.url is None) == (e.socket is None):
            problems.append(doc.problem(at, "give exactly one of url or socket"))
        elif e.url is not None:
            parts = urlsplit(e.url)
            if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
                problems.append(doc.problem((*at, "url"), "must be http://HOST:PORT (no path)"))
            elif not _is_loopback(parts.hostname):
                problems.append(doc.problem((*at, "url"), "engines listen on loopback only "
                                            "(127.0.0.1, ::1, localhost) and trust only the front door"))
        elif not Path(str(e.socket)).is_absolute():
            problems.append(doc.problem((*at, "socket"), "must be an absolute path"))
        if len(set(e.models)) != len(e.models):
            problems.append(doc.problem((*at, "models"), "a model is listed twice"))
        for m in e.models:
            if role_of.setdefault(m, e.role) != e.role:
                problems.append(doc.problem((*at, "role"), f"model {m!r} is served as {role_of[m]} elsewhere"))
        g = group_of.setdefault(e.replica_group, (e.role, tuple(sorted(e.models))))
        if g != (e.role, tuple(sorted(e.models))):
            problems.append(doc.problem((*at, "group"), f"replicas of group {e.replica_group!r} must serve "
                                        "the same models with the same role"))
    lp = cfg.plain_loopback_port
    if cfg.loopback_port and cfg.tls_dir is None:
        problems.append(doc.problem(("loopback_port",), "needs tls_dir: without TLS the port itself speaks "
                                    "plain HTTP (remove loopback_port)"))
    elif lp is not None:
        if lp == cfg.port and cfg.host in ("0.0.0.0", "::", "", LOOPBACK_HOST, "localhost"):
            problems.append(doc.problem(("loopback_port",), f"is the HTTPS port {cfg.port} on the same address"))
        for i, e in enumerate(cfg.engines):
            if e.url is not None and _url_port(e.url) == lp and urlsplit(e.url).hostname in (LOOPBACK_HOST, "localhost"):
                problems.append(doc.problem(("loopback_port",), f"engine {e.name} (engines[{i}]) listens there"))
    if cfg.access_files()["keys_file"] is None:
        for name in ("ledger_file", "audit_file", "secret_file", "syslog"):
            if getattr(cfg, name) is not None:
                problems.append(doc.problem((name,), "needs keys_file or access_dir: usage and audit are "
                                            "recorded per key"))
        if cfg.audit_content:
            problems.append(doc.problem(("audit_content",), "needs keys_file or access_dir"))
    return problems


def gateway_config_from_text(text: str, name: str = "gateway config", *, base_dir: Path | None = None) -> GatewayConfig:
    doc = read_document(text, name)
    cfg = validate(doc, GatewayConfig)
    raise_problems(_cross_checks(cfg, doc))
    if base_dir is not None:  # relative paths are relative to the file's folder
        import dataclasses

        moved = {k: base_dir / v for k in _PATH_KEYS if (v := getattr(cfg, k)) is not None
                 and not v.expanduser().is_absolute()}
        cfg = dataclasses.replace(cfg, **moved) if moved else cfg
    return cfg


_PATH_KEYS = ("internal_token_file", "access_dir", "keys_file", "ledger_file", "audit_file", "secret_file", "tls_dir")


def load_gateway_config(path: str | Path) -> GatewayConfig:
    """Read gateway.yaml; a relative path (token, access files, TLS folder) is relative to the file's folder."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"Gateway config not found: {path}", hint="aiboxctl gateway --help") from None
    return gateway_config_from_text(text, str(path), base_dir=path.parent)
