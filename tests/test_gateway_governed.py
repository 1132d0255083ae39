"""Governed access at the front door, end to end (issue 16): a real SmolLM2 engine behind a real
`aiboxctl gateway` child with keys, limits, the usage ledger, the audit chain and TLS switched on
in gateway.yaml. Scope (403), expiry and revocation (401), RPM and concurrency (429 naming the
limit, the reservation freed when a client leaves), the ledger against the engine's own token
counters for a mixed load, the audit chain verified and a flipped byte named, the `openai` client
over HTTPS with and without the CA, and kill -9 of the front door losing no acknowledged record.

Bounded for a 2-core box: one engine (2 slots, 1 thread), short answers."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from test_engine_support import _die_with_parent, free_port, wait_until
from test_gateway import _engine
from test_engine_support import smollm2_path

from aiboxctl.access.keys import KeyLimits, KeyStore
from aiboxctl.access.ledger import iter_records
from aiboxctl.access.tls import TlsFiles, init_local

TOKEN = "internal-governed-41c2"
AIBOXCTL = str(Path(sys.executable).with_name("aiboxctl"))
CHAT = "/v1/chat/completions"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([AIBOXCTL, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "400"})


def _start_gateway(tmp: Path, name: str, engine_port: int, *, ghost: bool = False, **extra) -> tuple[subprocess.Popen, int]:
    """A gateway child over the engine; ``ghost``: also a model whose one engine never answers (503)."""
    port = free_port()
    engines = [{"name": "chat-0", "models": ["smollm2"], "url": f"http://127.0.0.1:{engine_port}"}]
    if ghost:
        engines.append({"name": "ghost-0", "models": ["ghost"], "url": f"http://127.0.0.1:{free_port()}"})
    cfg = {"port": port, "internal_token_file": str(tmp / "engine-keys"), "health_interval_s": 0.5,
           "engines": engines, **extra}
    (tmp / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    log = open(tmp / f"{name}.log", "wb")
    proc = subprocess.Popen([AIBOXCTL, "gateway", "--config", str(tmp / f"{name}.yaml")], stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
    return proc, port


class Box:
    tmp: Path
    root: Path  # the installation prefix the CLI's --root names (keys, ledger, audit, TLS under it)
    base: str
    verify: ssl.SSLContext
    secrets: dict[str, str]
    engine: object
    gateway: subprocess.Popen

    def client(self, key: str | None = None, **kw) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.secrets[key]}"} if key else {}
        return httpx.Client(base_url=self.base, verify=self.verify, headers=headers, timeout=300, **kw)

    def ledger(self, key: str) -> list:
        return [r for r in iter_records(self.root / "var/lib/aibox/usage.db") if r.key == key]

    def engine_tokens(self) -> tuple[int, int]:
        text = httpx.get(self.engine.base + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
        read = lambda n: int(float(re.search(rf"^{n}_total (\S+)$", text, re.M).group(1)))  # noqa: E731
        return read("aibox_prompt_tokens"), read("aibox_generated_tokens")


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    b = Box()
    b.tmp = tmp = tmp_path_factory.mktemp("governed")
    b.root = tmp / "root"
    (tmp / "engine-keys").write_text(f"gateway:{TOKEN}\n")
    tls = TlsFiles(b.root / "etc/aibox/tls")
    init_local(tls, ["127.0.0.1", "localhost"])
    b.verify = ssl.create_default_context(cafile=str(tls.ca_cert))
    b.secrets = {}
    for name, *flags in [("ops", "--admin"), ("legal", "--models", "smollm2", "--department", "legal"),
                         ("meter", "--department", "finance"), ("rpm2", "--rpm", "2"),
                         ("solo", "--concurrency", "1"), ("temp",)]:
        r = _cli("keys", "add", name, *flags, "--root", str(b.root), "--json")
        assert r.returncode == 0, r.stderr
        b.secrets[name] = json.loads(r.stdout)["data"]["secret"]
    # A key that is already past its expiry (the e2e's clock is the real one).
    b.secrets["old"] = KeyStore(b.root / "etc/aibox/keys.json").add(
        "old", KeyLimits(expires_at=time.time() - 60), now=time.time() - 3600).secret
    etc, lib, logd = b.root / "etc/aibox", b.root / "var/lib/aibox", b.root / "var/log/aibox"
    with contextlib.ExitStack() as stack:
        b.engine = stack.enter_context(_engine(tmp, "chat-0", smollm2_path(), "smollm2", free_port()))
        b.gateway, port = _start_gateway(
            tmp, "gateway", int(b.engine.base.rsplit(":", 1)[1]), keys_file=str(etc / "keys.json"),
            ledger_file=str(lib / "usage.db"), audit_file=str(logd / "access-audit.jsonl"),
            secret_file=str(etc / "box-secret"), tls_dir=str(tls.dir), ghost=True, loopback_port=free_port())
        b.base = f"https://127.0.0.1:{port}"

        def up() -> bool:
            assert b.gateway.poll() is None, (tmp / "gateway.log").read_text()
            try:
                health = httpx.get(b.base + "/health", verify=b.verify, timeout=5).json()
                return health["models"]["smollm2"]["healthy"] == 1  # ghost stays down
            except httpx.HTTPError:
                return False

        assert wait_until(up, timeout=60), (tmp / "gateway.log").read_text()
        yield b
        b.gateway.send_signal(signal.SIGTERM)
        assert b.gateway.wait(30) == 0, (tmp / "gateway.log").read_text()[-3000:]


def _ask(max_tokens: int = 4, **extra) -> dict:
    return {"model": "smollm2", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": max_tokens,
            "temperature": 0, **extra}


def test_scope_expiry_and_missing_key(box):
    with box.client("legal") as c:
        r = c.post(CHAT, json={**_ask(), "model": "gemma"})
        assert r.status_code == 403, r.text
        err = r.json()["error"]
        assert err["code"] == "model_not_allowed" and err["param"] == "model" and "smollm2" in err["message"]
        assert set(err) == {"message", "type", "param", "code"}
        assert c.post(CHAT, json=_ask()).status_code == 200
    with box.client("old") as c:
        r = c.post(CHAT, json=_ask())
        assert r.status_code == 401 and r.json()["error"]["code"] == "expired_api_key"
    with box.client() as c:
        assert c.post(CHAT, json=_ask()).status_code == 401
        assert c.get("/v1/models").status_code == 401  # the web page's sign-in asks this
        assert c.post("/v1/aibox/extract?name=a.txt", content=b"hello").status_code == 401  # its upload
        assert c.get("/").status_code == 200  # the page itself loads, then asks for a key
    with box.client("legal") as c:
        assert "smollm2" in [m["id"] for m in c.get("/v1/models").json()["data"]]
        assert c.post("/v1/aibox/extract?name=a.txt", content=b"hello").status_code == 200
    assert sorted(r.status for r in box.ledger("legal")) == [200, 403]


def test_revocation_is_seen_on_the_next_request(box):
    with box.client("temp") as c:
        assert c.post(CHAT, json=_ask()).status_code == 200
        r = _cli("keys", "revoke", "temp", "--root", str(box.root))
        assert r.returncode == 0, r.stderr
        r = c.post(CHAT, json=_ask())
        assert r.status_code == 401 and r.json()["error"]["code"] == "revoked_api_key"


def test_rpm_and_concurrency_limits(box):
    with box.client("rpm2") as c:
        assert [c.post(CHAT, json=_ask()).status_code for _ in range(2)] == [200, 200]
        r = c.post(CHAT, json=_ask())
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert "requests per minute" in r.json()["error"]["message"]
    with box.client("solo") as c, box.client("solo") as other:
        # 400 tokens whatever the model says: the stream is still going when the client leaves.
        with c.stream("POST", CHAT, json=_ask(400, stream=True, ignore_eos=True)) as held:
            assert held.status_code == 200
            lines = held.iter_lines()  # kept: a dropped line iterator closes the connection
            next(lines)  # the stream is under way: the key's one request is in flight
            r = other.post(CHAT, json=_ask())
            assert r.status_code == 429 and r.headers["Retry-After"] == "1"
            assert "concurrent" in r.json()["error"]["message"]
        # The client left mid-answer: the front door finishes the request, which frees the key.
        assert wait_until(lambda: other.post(CHAT, json=_ask()).status_code == 200, timeout=60, interval=0.5)
    statuses = [r.status for r in box.ledger("solo")]
    assert 499 in statuses and 429 in statuses and statuses.count(200) == 1
    # Refused after admission (a model no engine serves: 404; one whose engines are all down: 503):
    # each refusal frees the key's one request, so the next is refused the same way, not with 429.
    with box.client("solo") as c:
        assert [c.post(CHAT, json={**_ask(), "model": "nowhere"}).status_code for _ in range(2)] == [404, 404]
        assert [c.post(CHAT, json={**_ask(), "model": "ghost"}).status_code for _ in range(2)] == [503, 503]
    assert [r.status for r in box.ledger("solo")][-4:] == [404, 404, 503, 503]


def _one(box: Box, kind: str) -> tuple[int, int] | None:
    """One request of the mixed load; the usage the client saw (None: it did not ask for it)."""
    with box.client("meter") as c:
        if kind == "json":
            r = c.post(CHAT, json=_ask(16))
            assert r.status_code == 200, r.text
            u = r.json()["usage"]
            return u["prompt_tokens"], u["completion_tokens"]
        extra = {"stream_options": {"include_usage": True}} if kind == "usage" else {}
        with c.stream("POST", CHAT, json=_ask(16, stream=True, **extra)) as r:
            assert r.status_code == 200
            events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        usage = [ch["usage"] for ch in chunks if ch.get("usage")]
        if kind == "plain":  # the usage chunk the front door asked for is not passed on
            assert usage == [] and all(ch["choices"] for ch in chunks)
            return None
        assert len(usage) == 1 and chunks[-1]["choices"] == []
        return usage[0]["prompt_tokens"], usage[0]["completion_tokens"]


def test_ledger_equals_engine_usage_for_a_mixed_load(box):
    before = box.engine_tokens()
    kinds = ["json", "plain", "usage", "json", "plain", "usage"]
    with ThreadPoolExecutor(3) as pool:
        seen = list(pool.map(lambda k: _one(box, k), kinds))
    rows = box.ledger("meter")
    assert len(rows) == len(kinds) and {r.status for r in rows} == {200}
    assert {r.department for r in rows} == {"finance"}
    ledger = (sum(r.prompt_tokens for r in rows), sum(r.completion_tokens for r in rows))
    # The engine counts a request when it ends, just after its last byte: wait for it.
    assert wait_until(lambda: box.engine_tokens() != before, timeout=30)
    wait_until(lambda: tuple(a - b for a, b in zip(box.engine_tokens(), before)) == ledger, timeout=15)
    assert tuple(a - b for a, b in zip(box.engine_tokens(), before)) == ledger
    from collections import Counter

    assert not Counter(s for s in seen if s) - Counter((r.prompt_tokens, r.completion_tokens) for r in rows)
    with box.client("ops") as c:
        text = c.get("/metrics").text
    by_kind = {k: float(re.search(rf'aibox_gateway_key_tokens_total{{key="meter",kind="{k}",model="smollm2"}} (\S+)',
                                  text).group(1)) for k in ("prompt", "completion")}
    assert (by_kind["prompt"], by_kind["completion"]) == ledger
    assert re.search(r'aibox_gateway_access_denied_total{reason="rpm"} 1\.0', text)
    with box.client("meter") as c:
        assert c.get("/metrics").status_code == 403  # a user key may not read the metrics


def test_audit_chain_verifies_and_names_a_flipped_record(box):
    r = _cli("audit", "verify", "--root", str(box.root))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "intact" in r.stdout
    audit = box.root / "var/log/aibox/access-audit.jsonl"
    lines = audit.read_bytes().splitlines(keepends=True)
    assert len(lines) >= 10 and b'"content"' not in audit.read_bytes()  # metadata only by default
    rec = json.loads(lines[4])
    copy = box.tmp / "audit-copy.jsonl"
    lines[4] = lines[4].replace(b'"status":', b'"status":9', 1) if b'"status":' in lines[4] else lines[4][:-3] + b"X" + lines[4][-2:]
    copy.write_bytes(b"".join(lines))
    r = _cli("audit", "verify", str(copy), "--secret", str(box.root / "etc/aibox/box-secret"))
    assert r.returncode == 4, r.stdout + r.stderr
    assert f"record {rec['seq']} was changed" in r.stderr and "line 5" in r.stderr


def test_openai_client_over_https_needs_the_ca(box):
    import openai

    with httpx.Client(verify=box.verify) as http:
        client = openai.OpenAI(base_url=box.base + "/v1", api_key=box.secrets["legal"], http_client=http,
                               max_retries=0)
        answer = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Hi"}],
                                                max_tokens=4)
        assert answer.choices[0].message.content and answer.usage.completion_tokens >= 1
    with httpx.Client() as http:  # the system's trust store: the box's CA is not in it
        client = openai.OpenAI(base_url=box.base + "/v1", api_key=box.secrets["legal"], http_client=http,
                               max_retries=0)
        with pytest.raises(openai.APIConnectionError) as info:
            client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
        assert "CERTIFICATE_VERIFY_FAILED" in repr(info.value.__cause__)


def test_kill9_of_the_front_door_loses_no_acknowledged_record(box):
    """Clients keep asking until the front door is killed with SIGKILL; every answer a client saw
    end (a whole JSON body, or a stream's [DONE]) has its ledger row."""
    tmp = box.tmp / "kill"
    tmp.mkdir()
    (tmp / "engine-keys").write_text(f"gateway:{TOKEN}\n")
    secret = KeyStore(tmp / "access/keys.json").add("load", KeyLimits(), now=time.time()).secret
    proc, port = _start_gateway(tmp, "gw", int(box.engine.base.rsplit(":", 1)[1]), access_dir="access")
    base = f"http://127.0.0.1:{port}"
    assert wait_until(lambda: proc.poll() is None and _up(base), timeout=60), (tmp / "gw.log").read_text()
    done: list[tuple[int, int]] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {secret}"}, timeout=300) as c:
            while True:
                try:
                    if i % 2:
                        r = c.post(CHAT, json=_ask(8))
                        u = r.json()["usage"]
                    else:
                        with c.stream("POST", CHAT, json=_ask(8, stream=True, stream_options={"include_usage": True})) as r:
                            events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
                        assert events[-1] == "[DONE]"
                        u = json.loads(events[-2])["usage"]
                except (httpx.HTTPError, ValueError, AssertionError, IndexError, KeyError):
                    return  # the front door is gone
                with lock:
                    done.append((u["prompt_tokens"], u["completion_tokens"]))

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(worker, i) for i in range(4)]
        assert wait_until(lambda: len(done) >= 4, timeout=300, interval=0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for f in futures:
            f.result()
    rows = [r for r in iter_records(tmp / "access/usage.db") if r.status == 200]
    from collections import Counter

    assert not Counter(done) - Counter((r.prompt_tokens, r.completion_tokens) for r in rows), (done, rows)
    assert len(rows) >= len(done)


def _up(base: str) -> bool:
    try:
        return httpx.get(base + "/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def test_audit_content_records_the_request_and_the_answer_relayed(box):
    """`audit_content: true` (a healthcare-style profile): the chain holds each request's messages
    and the answer the client got, streamed or not (the setting used to be accepted and ignored)."""
    audit = box.tmp / "content-audit.jsonl"
    proc, port = _start_gateway(box.tmp, "content-gateway", int(box.engine.base.rsplit(":", 1)[1]),
                                keys_file=str(box.root / "etc/aibox/keys.json"), audit_file=str(audit),
                                secret_file=str(box.root / "etc/aibox/box-secret"), audit_content=True)
    base = f"http://127.0.0.1:{port}"
    try:
        assert wait_until(lambda: _healthy(base), timeout=60), (box.tmp / "content-gateway.log").read_text()
        headers = {"Authorization": f"Bearer {box.secrets['meter']}"}
        whole = httpx.post(base + CHAT, json=_ask(8), headers=headers, timeout=300).json()
        streamed = []
        with httpx.stream("POST", base + CHAT, json=_ask(8, stream=True), headers=headers, timeout=300) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    for choice in json.loads(line[6:]).get("choices") or ():
                        streamed.append((choice.get("delta") or {}).get("content") or "")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    records = [json.loads(x) for x in audit.read_text().splitlines()]
    requests = [x for x in records if x.get("event") == "request"]
    assert len(requests) == 2 and all(x["content"]["request"]["messages"] == _ask()["messages"] for x in requests)
    assert requests[0]["content"]["answer"]["content"] == whole["choices"][0]["message"]["content"]
    assert requests[1]["content"]["answer"]["content"] == "".join(streamed) != ""
    assert _cli("audit", "verify", str(audit), "--secret", str(box.root / "etc/aibox/box-secret")).returncode == 0


def _healthy(base: str) -> bool:
    try:
        return httpx.get(base + "/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def test_plain_http_on_loopback_beside_https_on_the_lan(box):
    """With TLS the front door also speaks plain HTTP on 127.0.0.1 (loopback_port) for this box's
    own tools; the LAN address (here 127.0.0.2) speaks HTTPS only, and the plain port is not on it."""
    lan, lp = "127.0.0.2", free_port()
    tls = TlsFiles(box.tmp / "lan-tls")
    init_local(tls, [lan])
    proc, port = _start_gateway(box.tmp, "lan-gateway", int(box.engine.base.rsplit(":", 1)[1]), host=lan,
                                tls_dir=str(tls.dir), loopback_port=lp,
                                keys_file=str(box.root / "etc/aibox/keys.json"))
    https, plain = f"https://{lan}:{port}", f"http://127.0.0.1:{lp}"
    verify = ssl.create_default_context(cafile=str(tls.ca_cert))
    headers = {"Authorization": f"Bearer {box.secrets['legal']}"}
    try:
        assert wait_until(lambda: proc.poll() is None and _healthy(plain), timeout=60), \
            (box.tmp / "lan-gateway.log").read_text()
        r = httpx.post(https + CHAT, json=_ask(), headers=headers, verify=verify, timeout=300)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
        r = httpx.post(plain + CHAT, json=_ask(), headers=headers, timeout=300)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
        assert httpx.post(plain + CHAT, json=_ask(), timeout=60).status_code == 401  # still governed
        with pytest.raises(httpx.HTTPError):  # plain HTTP to the LAN address: the TLS port does not answer it
            httpx.get(f"http://{lan}:{port}/health", timeout=10)
        with pytest.raises(httpx.ConnectError):  # and the plain port is not on the LAN address at all
            httpx.get(f"http://{lan}:{lp}/health", timeout=10)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, (box.tmp / "lan-gateway.log").read_text()[-3000:]
    assert f"http://127.0.0.1:{lp}" in (box.tmp / "lan-gateway.log").read_text()


def _health(base: str) -> tuple[int, dict]:
    r = httpx.get(base + "/health", timeout=10)
    return r.status_code, r.json()


def test_a_ledger_or_audit_that_cannot_be_written_is_degraded_and_fails_closed(box):
    """While the front door runs, its audit file is replaced with a folder, then the process may
    write no byte past the start of a file (RLIMIT_FSIZE: what a full disk looks like to it). The
    answer whose record failed never gets its end (a stream: an error event, no [DONE]; a JSON
    body: cut), /health is 503 naming the store and the error, new requests get 503 — and all
    of it clears once the store can be written again."""
    import resource

    tmp = box.tmp / "failing"
    tmp.mkdir()
    (tmp / "engine-keys").write_text(f"gateway:{TOKEN}\n")
    audit = tmp / "access/access-audit.jsonl"
    secret = KeyStore(tmp / "access/keys.json").add("load", KeyLimits(), now=time.time()).secret
    proc, port = _start_gateway(tmp, "gw", int(box.engine.base.rsplit(":", 1)[1]), access_dir="access")
    base, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {secret}"}
    seen_whole = []

    def ask_stream() -> list[str]:
        with httpx.stream("POST", base + CHAT, json=_ask(4, stream=True), headers=headers, timeout=300) as r:
            return [line[6:] for line in r.iter_lines() if line.startswith("data: ")]

    try:
        assert wait_until(lambda: proc.poll() is None and _up(base), timeout=60), (tmp / "gw.log").read_text()
        assert ask_stream()[-1] == "[DONE]"
        seen_whole.append(200)
        # 1. the audit file becomes a folder
        audit.rename(tmp / "audit.moved")
        audit.mkdir()
        events = ask_stream()
        assert "[DONE]" not in events and json.loads(events[-1])["error"]["code"] == "recording_unavailable"
        code, body = _health(base)
        assert code == 503 and body["status"] == "degraded"
        assert any("audit log" in p and "IsADirectoryError" in p for p in body["problems"]), body
        r = httpx.post(base + CHAT, json=_ask(), headers=headers, timeout=60)
        assert r.status_code == 503 and r.json()["error"]["code"] == "recording_unavailable", r.text
        audit.rmdir()
        (tmp / "audit.moved").rename(audit)
        assert wait_until(lambda: _health(base)[0] == 200, timeout=10)
        assert httpx.post(base + CHAT, json=_ask(), headers=headers, timeout=300).status_code == 200
        seen_whole.append(200)
        # 2. no file of the process may grow past its first byte (ENOSPC / EFBIG for the ledger's WAL)
        limits = resource.prlimit(proc.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (1, limits[1]))
        try:
            with pytest.raises(httpx.HTTPError):  # the JSON body is cut: never a whole 200 answer
                httpx.post(base + CHAT, json=_ask(), headers=headers, timeout=300).json()
            code, body = _health(base)
            assert code == 503 and any("usage ledger" in p for p in body["problems"]), body
            assert httpx.post(base + CHAT, json=_ask(), headers=headers, timeout=60).status_code == 503
        finally:
            resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, limits)
        assert wait_until(lambda: _health(base)[0] == 200, timeout=10)
        assert httpx.post(base + CHAT, json=_ask(), headers=headers, timeout=300).status_code == 200
        seen_whole.append(200)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, (tmp / "gw.log").read_text()[-3000:]
    rows = [r for r in iter_records(tmp / "access/usage.db") if r.status == 200]
    assert len(rows) >= len(seen_whole)
    assert _cli("audit", "verify", str(audit), "--secret", str(tmp / "access/box-secret")).returncode == 0
