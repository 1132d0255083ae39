"""The usage ledger: WAL + synchronous=FULL, group commit, reports; a kill -9 of a writer
process mid-load loses no acknowledged record (a real child process)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

from aiboxctl.access.ledger import Ledger, UsageRecord, iter_records, usage_report


def rec(i: int, key="alice", dept="legal", model="qwen", status=200, p=10, c=5, t=None) -> UsageRecord:
    return UsageRecord(time=t if t is not None else 1000.0 + i, key=key, department=dept, model=model,
                       endpoint="chat", status=status, prompt_tokens=p, completion_tokens=c, duration_ms=12.5)


def test_wal_full_and_no_content_columns(tmp_path):
    path = tmp_path / "usage.db"
    with Ledger(path) as ledger:
        ledger.record(rec(1))
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        cols = [r[1] for r in conn.execute("PRAGMA table_info(requests)")]
        conn.close()
    assert not {"prompt", "messages", "content", "completion"} & set(cols)
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_concurrent_records_are_group_committed_and_all_kept(tmp_path):
    with Ledger(tmp_path / "usage.db") as ledger:
        threads = [threading.Thread(target=lambda i=i: [ledger.record(rec(i * 100 + j)) for j in range(50)])
                   for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        commits = ledger.commits
    assert len(list(iter_records(tmp_path / "usage.db"))) == 800
    assert commits < 800  # several records shared a commit


def test_report_by_key_department_model_since(tmp_path):
    path = tmp_path / "usage.db"
    with Ledger(path) as ledger:
        ledger.record(rec(1, key="alice", dept="legal", model="qwen", p=100, c=20, t=10.0),
                      rec(2, key="bob", dept="legal", model="qwen", p=50, c=5, t=20.0),
                      rec(3, key="carol", dept="it", model="deepseek", p=7, c=3, t=30.0, status=429),
                      rec(4, key="alice", dept="legal", model="deepseek", p=1, c=1, t=5.0))
        assert ledger.tokens_since("alice", 6.0) == 120
    by_dept = {r.group: r for r in usage_report(path, since=6.0, by="department").rows}
    assert by_dept["legal"].requests == 2 and by_dept["legal"].total_tokens == 175
    assert by_dept["it"].errors == 1
    by_model = {r.group: r.total_tokens for r in usage_report(path, since=None, by="model").rows}
    assert by_model == {"deepseek": 12, "qwen": 175}


WRITER = textwrap.dedent("""
    import sys
    from aiboxctl.access.ledger import Ledger, UsageRecord
    from concurrent.futures import ThreadPoolExecutor
    ledger = Ledger(sys.argv[1])
    def one(i):
        ledger.record(UsageRecord(float(i), f"k{i % 7}", "d", "m", "chat", 200, i, 1, 1.0))
        sys.stdout.write(f"{i}\\n"); sys.stdout.flush()   # acknowledged
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(10**9)))
""")


def test_kill_9_mid_load_loses_no_acknowledged_record(tmp_path):
    path = tmp_path / "usage.db"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    acked: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(acked) < 1500 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acked.append(int(line))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        # whatever the child printed before dying was acknowledged too
        acked += [int(x) for x in proc.stdout.read().split()]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(acked) >= 1500, "the writer did not get going"
    stored = {int(r.time) for r in iter_records(path)}  # opening recovers the WAL
    assert not set(acked) - stored


def test_a_failed_commit_is_raised_kept_as_failure_and_cleared_by_a_probe(tmp_path):
    """Another process holds the database's write lock past the busy timeout: record raises (the
    row is not acknowledged), ``failure`` says why, the writer thread lives on, and once the lock
    is gone a probe write succeeds and clears it."""
    import pytest

    from aiboxctl.access.gate import AccessControl, AccessSettings, NotRecorded
    from aiboxctl.access.keys import KeyLimits, KeyStore
    from aiboxctl.access.refusal import AccessDenied

    secret = KeyStore(tmp_path / "keys.json").add("k", KeyLimits(), now=time.time()).secret
    access = AccessControl(AccessSettings(keys_file=tmp_path / "keys.json", ledger_file=tmp_path / "usage.db"))
    access.ledger.close()
    access.ledger = ledger = Ledger(tmp_path / "usage.db", busy_timeout_s=0.2)
    admission = access.admit(f"Bearer {secret}", "m", "chat", 10)
    holder = sqlite3.connect(tmp_path / "usage.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    with pytest.raises(NotRecorded, match="database is locked"):
        access.finish(admission, 200, prompt_tokens=3, completion_tokens=4)
    assert "locked" in ledger.failure and not ledger.probe()
    problems = access.problems()
    assert len(problems) == 1 and "usage ledger" in problems[0] and "cannot be written" in problems[0]
    with pytest.raises(AccessDenied) as denied:  # fail closed: no governed request while it cannot record
        access.admit(f"Bearer {secret}", "m", "chat", 10)
    assert denied.value.status == 503 and denied.value.code == "recording_unavailable"
    holder.execute("ROLLBACK")
    holder.close()
    access._probed = float("-inf")  # the probe interval has passed
    assert access.problems() == () and ledger.failure is None
    access.finish(access.admit(f"Bearer {secret}", "m", "chat", 10), 200, prompt_tokens=1, completion_tokens=2)
    access.close()
    assert [(r.status, r.prompt_tokens) for r in iter_records(tmp_path / "usage.db")] == [(200, 1)]
