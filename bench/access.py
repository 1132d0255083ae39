#!/usr/bin/env python3
"""What governed access costs per request, on this machine.

* Ledger: records/s committed (fsynced: synchronous=FULL in WAL mode) by 1, 16 and 64 writer
  threads through :class:`aiboxctl.access.ledger.Ledger` (group commit). Anchor, same run, same
  disk: one plain ``INSERT`` + ``COMMIT`` per record on a raw sqlite3 connection with the same
  pragmas — what a ledger without group commit would get. Goal: ≥ 2,000 records/s.
* The gate: µs per admit + finish (key check, scope, limits, ledger row, audit record) with 16
  threads, against a request that only checks its key (KeyRing.authenticate).

    .venv/bin/python bench/access.py [--records 4000] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiboxctl.access.gate import AccessControl, AccessSettings
from aiboxctl.access.keys import KeyLimits, KeyRing, KeyStore
from aiboxctl.access.ledger import Ledger, UsageRecord


def rec(i: int) -> UsageRecord:
    return UsageRecord(time.time(), f"key{i % 20}", "dept", "qwen", "chat", 200, 100, 50, 12.0)


def raw_anchor(path: Path, n: int) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t (time REAL, key TEXT, department TEXT, model TEXT, endpoint TEXT, status INT, "
                 "p INT, c INT, d REAL)")
    t0 = time.perf_counter()
    for i in range(n):
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t VALUES (?,?,?,?,?,?,?,?,?)", tuple(vars(rec(i)).values()))
        conn.execute("COMMIT")
    rate = n / (time.perf_counter() - t0)
    conn.close()
    return rate


def ledger_rate(path: Path, n: int, threads: int) -> tuple[float, int]:
    with Ledger(path) as ledger:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda i: ledger.record(rec(i)), range(n)))
        rate = n / (time.perf_counter() - t0)
        return rate, ledger.commits


def gate_cost(d: Path, n: int) -> tuple[float, float]:
    store = KeyStore(d / "keys.json")
    secrets = [store.add(f"key{i}", KeyLimits(rpm=10**6, tokens_per_day=10**12, concurrency=1000), now=time.time())
               .secret for i in range(20)]
    access = AccessControl(AccessSettings(keys_file=d / "keys.json", ledger_file=d / "gate.db",
                                          audit_file=d / "audit.jsonl", secret_file=d / "box-secret"))

    def one(i: int) -> None:
        adm = access.admit(f"Bearer {secrets[i % 20]}", "qwen", "chat", 200)
        access.finish(adm, 200, prompt_tokens=100, completion_tokens=50)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(n)))
    full = (time.perf_counter() - t0) / n * 1e6
    access.close()
    ring = KeyRing(d / "keys.json")
    t0 = time.perf_counter()
    for i in range(n):
        ring.authenticate(f"Bearer {secrets[i % 20]}")
    auth_only = (time.perf_counter() - t0) / n * 1e6
    return full, auth_only


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=4000)
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        d = Path(tmp)
        anchor = raw_anchor(d / "raw.db", min(a.records, 2000))
        print(f"anchor: one fsynced commit per record (raw sqlite3, WAL, synchronous=FULL): {anchor:,.0f} records/s")
        for threads in (1, 16, 64):
            rate, commits = ledger_rate(d / f"ledger{threads}.db", a.records, threads)
            print(f"ledger, {threads:>2} writer thread(s): {rate:,.0f} records/s in {commits} commits "
                  f"({a.records / commits:.1f} per commit) = {rate / anchor:.2f}× the anchor; goal ≥ 2,000/s")
        full, auth = gate_cost(d, a.records)
        print(f"gate admit + finish (key, scope, limits, fsynced ledger row, audit record), 16 threads: "
              f"{full:,.0f} µs/request of wall time; anchor, the key check alone: {auth:,.1f} µs "
              f"({full / auth:,.0f}× the anchor)")


if __name__ == "__main__":
    main()
