"""One front-door stream level's figures from its rotated rounds, and the process figures they
take (CPU seconds, resident sizes from /proc): shared by bench/front_door.py and
bench/device_check.py (stdlib only: the device's python imports it with device_check, and may
lack psutil)."""

from __future__ import annotations

import os
import statistics
from pathlib import Path

FRONT_DOOR_SIDES = ("direct", "gateway", "access")  # access only where it runs


def cpu_seconds(pid: int) -> float:
    """A process's user + system CPU seconds (all its threads), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)


def status_bytes(pid: int, field: str) -> int | None:
    """A size field of /proc/<pid>/status (VmRSS; VmHWM, the peak the kernel keeps: no sampling)
    in bytes; None when gone or absent."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def side_figures(rs: list[dict]) -> dict:
    """One side's rounds: the median aggregate, each round's, TTFT p50 over every stream of every
    round, the tokens and wall summed, and the engine's CPU per token."""
    return {"aggregate": statistics.median(r["aggregate"] for r in rs), "rounds": [r["aggregate"] for r in rs],
            "ttft_p50_ms": statistics.median(t for r in rs for t in r["ttfts"]) * 1e3,
            "tokens": sum(r["tokens"] for r in rs), "wall": sum(r["wall"] for r in rs),
            "engine_cpu_us_per_token": sum(r["engine_cpu"] for r in rs) * 1e6 / max(1, sum(r["tokens"] for r in rs))}


def idle_rate(direct: list[dict], proc: str) -> float:
    """``proc``'s CPU per second of wall while the direct side ran (it relayed nothing then)."""
    wall = sum(r["wall"] for r in direct)
    return sum(r.get(f"{proc}_cpu", 0.0) for r in direct) / wall if wall else 0.0


def front_door_level(rounds: dict[str, list[dict]], idle_cores: float, access_idle_cores: float = 0.0) -> dict:
    """One stream level's figures from its rounds (per side: each round's aggregate, TTFTs,
    tokens, wall, and the CPU seconds the gateway, the access gateway where it ran and the
    engine spent while it ran). The access side is set against the plain gateway: what keys,
    limits, ledger and audit cost on top of the front door."""
    sides = [name for name in FRONT_DOOR_SIDES if rounds.get(name)]
    n = min(len(rounds[name]) for name in sides)
    side = {name: side_figures(rounds[name][:n]) for name in sides}

    def versus(top: str, bottom: str, proc: str, idle: float) -> dict:
        t, b = side[top], side[bottom]
        own = sum(r[f"{proc}_cpu"] for r in rounds[top][:n]) - idle * t["wall"]  # less its idle rate
        ratios = [x / y for x, y in zip(t["rounds"], b["rounds"])]
        return {"ratio": t["aggregate"] / b["aggregate"], "ratio_range": [min(ratios), max(ratios)],
                "ttft_added_ms": t["ttft_p50_ms"] - b["ttft_p50_ms"], "cpu_s": own,
                "cpu_us_per_token": own * 1e6 / max(1, t["tokens"]), "cores": own / t["wall"] if t["wall"] else None}

    g = versus("gateway", "direct", "gateway", idle_cores)
    out = {"rounds": n, **side, "ratio": g["ratio"], "ratio_range": g["ratio_range"],
           "ttft_added_ms": g["ttft_added_ms"], "gateway_cpu_s": g["cpu_s"],
           "gateway_cpu_us_per_token": g["cpu_us_per_token"], "gateway_cores": g["cores"]}
    if "access" in side:
        out.update({f"access_{k}": v for k, v in versus("access", "gateway", "access", access_idle_cores).items()})
    return out
