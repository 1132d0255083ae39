"""The audit chain: flip a byte, delete a line, insert a line, truncate → verify names the
record; signed checkpoints on rotation; content only when configured; syslog forwarding."""

from __future__ import annotations

import json
import socket

import pytest

from aiboxctl.access.audit import AuditChain, box_secret, rotated_files, verify_log


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        self.t += 0.5
        return self.t


def make(tmp_path, n=10, **kw) -> tuple:
    secret = box_secret(tmp_path / "box-secret")
    path = tmp_path / "audit.jsonl"
    chain = AuditChain(path, secret, now=Clock(), **kw)
    for i in range(n):
        chain.append({"event": "request", "key": f"k{i % 3}", "model": "qwen", "status": 200},
                     content={"messages": [{"role": "user", "content": f"secret question {i}"}]})
    return path, secret, chain


def lines(path):
    return path.read_bytes().splitlines(keepends=True)


def test_intact_chain_verifies_and_holds_no_content_by_default(tmp_path):
    path, secret, _ = make(tmp_path)
    result = verify_log(path, secret)
    assert result.ok and result.records == 10 and result.last_seq == 10
    assert b"secret question" not in path.read_bytes()
    assert oct((tmp_path / "box-secret").stat().st_mode & 0o777) == "0o600"


def test_content_only_when_configured(tmp_path):
    path, secret, _ = make(tmp_path, n=2, content=True)
    assert b"secret question 1" in path.read_bytes()
    assert verify_log(path, secret).ok


def test_flip_a_byte(tmp_path):
    path, secret, _ = make(tmp_path)
    data = bytearray(path.read_bytes())
    at = data.index(b'"status":200', len(b"".join(lines(path)[:4])))  # inside line 5
    data[at + 10] = ord("1")  # 200 → 210
    path.write_bytes(bytes(data))
    r = verify_log(path, secret)
    assert not r.ok and r.problem.kind == "changed" and r.problem.line == 5 and r.problem.seq == 5


def test_delete_a_line(tmp_path):
    path, secret, _ = make(tmp_path)
    ls = lines(path)
    path.write_bytes(b"".join(ls[:3] + ls[4:]))
    r = verify_log(path, secret)
    assert r.problem.kind == "removed" and r.problem.line == 4 and r.problem.seq == 4
    assert "4 were removed" in r.problem.message


def test_delete_the_last_line_is_seen_through_the_signed_head(tmp_path):
    path, secret, _ = make(tmp_path)
    path.write_bytes(b"".join(lines(path)[:-2]))
    r = verify_log(path, secret)
    assert r.problem.kind == "truncated" and "9–10" in r.problem.message


def test_insert_a_copied_line(tmp_path):
    path, secret, _ = make(tmp_path)
    ls = lines(path)
    path.write_bytes(b"".join(ls[:6] + [ls[2]] + ls[6:]))
    r = verify_log(path, secret)
    assert r.problem.kind == "inserted" and r.problem.line == 7


def test_insert_a_forged_line(tmp_path):
    path, secret, _ = make(tmp_path)
    ls = lines(path)
    forged = json.loads(ls[3])
    forged.update(seq=5, key="intruder")
    path.write_bytes(b"".join(ls[:4] + [json.dumps(forged, separators=(",", ":")).encode() + b"\n"] + ls[4:]))
    r = verify_log(path, secret)
    assert r.problem.kind == "inserted" and r.problem.line == 5


def test_rewritten_record_with_recomputed_hash_breaks_the_next_link(tmp_path):
    from aiboxctl.access.audit import canonical, record_hash

    path, secret, _ = make(tmp_path)
    ls = lines(path)
    rec = json.loads(ls[2])
    rec["key"] = "someone-else"
    rec["hash"] = record_hash(rec)
    ls[2] = canonical(rec) + b"\n"
    path.write_bytes(b"".join(ls))
    r = verify_log(path, secret)
    assert r.problem.kind == "changed" and r.problem.line == 3


def test_truncate_mid_record(tmp_path):
    path, secret, _ = make(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:-40])
    r = verify_log(path, secret)
    assert r.problem.kind == "truncated" and r.problem.line == 10


def test_rotation_writes_a_signed_checkpoint_and_the_chain_spans_files(tmp_path):
    path, secret, chain = make(tmp_path, n=5)
    rotated = chain.rotate()
    assert rotated == tmp_path / "audit.jsonl.1"
    last = json.loads(lines(rotated)[-1])
    assert last["type"] == "checkpoint" and last["records"] == 5 and last["sig"]
    for i in range(3):
        chain.append({"event": "request", "key": "k", "status": 200})
    chain2 = AuditChain(path, secret, now=Clock())  # a restart continues the chain
    chain2.append({"event": "request", "key": "k", "status": 200})
    r = verify_log(path, secret)
    assert r.ok and r.checkpoints == 1 and r.records == 10 and len(r.files) == 2
    assert verify_log(rotated, secret, single=True).ok
    # a checkpoint signed with another secret is named
    assert verify_log(path, b"x" * 32).problem.kind == "signature"
    # removing a whole rotated file leaves a gap the next file shows
    rotated.unlink()
    assert verify_log(path, secret).ok  # the oldest file removed by retention: chain anchors later
    assert rotated_files(path) == []


def test_automatic_rotation_by_size(tmp_path):
    path, secret, chain = make(tmp_path, n=30, max_bytes=2000)
    assert len(rotated_files(path)) >= 2
    assert verify_log(path, secret).ok


def test_forwarding_to_syslog(tmp_path):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    port = sock.getsockname()[1]
    try:
        path, secret, chain = make(tmp_path, n=1, syslog=f"udp://127.0.0.1:{port}")
        data = sock.recv(65536).decode()
    finally:
        sock.close()
    assert "aiboxctl-audit: " in data and '"seq":1' in data
    assert data.split("aiboxctl-audit: ", 1)[1].rstrip("\x00") == lines(path)[0].decode().rstrip("\n")


def test_a_damaged_tail_is_not_appended_over(tmp_path):
    from aiboxctl.errors import UsageError

    path, secret, _ = make(tmp_path, n=2)
    with open(path, "ab") as fh:
        fh.write(b'{"seq":3,"ha')
    with pytest.raises(UsageError) as exc:
        AuditChain(path, secret)
    assert exc.value.exit_code == 4
