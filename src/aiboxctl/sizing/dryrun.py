"""llama.cpp's own accounting: a dry run (allocates nothing) or a real load, in a child process.

The dry run loads the model with ``no_alloc=True`` and ``load_mode=LLAMA_LOAD_MODE_NONE`` and
creates a context: llama.cpp then reserves its worst-case graphs and logs the exact compute and
output buffers for any size of model in well under a second, while the model and KV buffer
lines read 0.00 (their sizes come from the "llama_kv_cache: size = …" lines and
``llama_model_size``, which are header arithmetic). A real load logs every buffer.

Both run in a child process started by module name (``python -m aiboxctl.engine.dryrun``, the
engine layer's side, which drives llama.cpp): llama.cpp aborts the whole process on
configurations it rejects, and its global state should not leak into the caller. This module is
the parent's side: it sends the configurations and reads the child's log lines into figures.
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from aiboxctl.errors import AiboxError
from aiboxctl.sizing.memory import HOST, EngineParams, MemoryEstimate

MiB = 1024 * 1024

_BUFFER = re.compile(r"^\s*(?P<what>\w+):\s+(?P<buft>\S+)\s+(?P<kind>model|KV|RS|output|compute) buffer size =\s*"
                     r"(?P<mib>[\d.]+) MiB")
_KV_SIZE = re.compile(r"^\s*llama_kv_cache: size =\s*(?P<mib>[\d.]+) MiB \(\s*(?P<cells>\d+) cells,\s*"
                      r"(?P<layers>\d+) layers")
_RS_SIZE = re.compile(r"^\s*llama_memory_recurrent: size =\s*(?P<mib>[\d.]+) MiB")
_FA = re.compile(r"flash_attn\s*=\s*(?:\w+\s*->\s*)?(?P<state>enabled|disabled|auto)", re.I)
_HOST_BUFTS = ("CPU", "CPU_Mapped", "CPU_REPACK", "AMX", "CPU_AARCH64", "KLEIDIAI")
_KINDS = {"model": "weights", "KV": "kv_cache", "RS": "recurrent", "output": "output", "compute": "compute"}


class DryRunFailed(AiboxError):
    code = "dry_run_failed"


@dataclass(frozen=True)
class OracleDevice:
    device: str
    weights: int = 0
    kv_cache: int = 0
    recurrent: int = 0
    compute: int = 0
    output: int = 0
    repack: int = 0  # extra-buffer-type copies of weights (CPU_REPACK, AMX)

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.recurrent + self.compute + self.output + self.repack

    def to_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


@dataclass(frozen=True)
class OracleResult:
    """llama.cpp's figures for one configuration (bytes; log values carry 0.01 MiB rounding)."""

    mode: str  # "dry" or "real"
    devices: tuple[OracleDevice, ...]
    seconds: float
    flash_attn: bool | None = None
    kv_cells: tuple[int, ...] = ()
    lines: tuple[str, ...] = field(default=(), repr=False)

    @property
    def host(self) -> OracleDevice:
        return self.devices[0]

    @property
    def total(self) -> int:
        return sum(d.total for d in self.devices)

    def device(self, name: str) -> OracleDevice:
        for d in self.devices:
            if d.device == name:
                return d
        return OracleDevice(name)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "devices": {d.device: d.to_dict() for d in self.devices},
                "total": self.total, "seconds": round(self.seconds, 3), "flash_attn": self.flash_attn,
                "kv_cells": list(self.kv_cells)}


def _device_of(buft: str) -> str:
    if buft in _HOST_BUFTS or buft.endswith("_Host"):
        return HOST
    return buft


def parse_buffer_lines(lines: list[str], *, mode: str, model_bytes: int = 0) -> dict:
    """Turn llama.cpp's log lines into per-device byte counts."""
    devs: dict[str, dict[str, int]] = {HOST: {}}
    kv_from_size = rs_from_size = 0
    cells: list[int] = []
    fa = None
    for line in lines:
        m = _BUFFER.match(line)
        if m:
            dev = _device_of(m["buft"])
            kind = _KINDS[m["kind"]]
            if kind == "weights" and m["buft"] in ("CPU_REPACK", "AMX", "CPU_AARCH64", "KLEIDIAI"):
                kind = "repack"
            entry = devs.setdefault(dev, {})
            entry[kind] = entry.get(kind, 0) + round(float(m["mib"]) * MiB)
            continue
        m = _KV_SIZE.match(line)
        if m:
            kv_from_size += round(float(m["mib"]) * MiB)
            cells.append(int(m["cells"]))
            continue
        m = _RS_SIZE.match(line)
        if m:
            rs_from_size += round(float(m["mib"]) * MiB)
            continue
        if "flash_attn" in line:
            f = _FA.search(line)
            if f and f["state"].lower() != "auto":
                fa = f["state"].lower() == "enabled"
    if mode == "dry":
        # Buffers of weights and KV read 0.00 in no_alloc mode: take the sizes llama.cpp
        # computed (single device: the host; dry runs are for CPU/one device here).
        devs[HOST]["weights"] = model_bytes
        devs[HOST]["kv_cache"] = kv_from_size
        devs[HOST]["recurrent"] = rs_from_size
    return {"devices": devs, "flash_attn": fa, "kv_cells": cells}


def oracle(model: str | Path, params: EngineParams, *, mode: str = "dry", timeout: float = 300.0,
           keep_lines: bool = False) -> OracleResult:
    """Run llama.cpp on ``model`` with ``params`` in a child process and return its figures."""
    return oracle_many(model, [params], mode=mode, timeout=timeout, keep_lines=keep_lines)[0]


def oracle_many(model: str | Path, params: list[EngineParams], *, mode: str = "dry", timeout: float = 600.0,
                keep_lines: bool = False) -> list[OracleResult | DryRunFailed]:
    """Several context configurations against one model load (same model parameters) in one
    child: the model loads once, each configuration creates and frees its own context. A
    configuration llama.cpp rejects comes back as a :class:`DryRunFailed` in its place; a
    single configuration that fails raises it."""
    from aiboxctl.system import run_command

    model_keys = {(p.n_gpu_layers, p.tensor_split, p.repack, p.mmap) for p in params}
    if len(model_keys) > 1:
        raise ValueError("oracle_many: all configurations must share the model parameters")
    request = {"model": str(model), "params": [asdict(p) for p in params], "mode": mode}
    started = time.monotonic()
    res = run_command([sys.executable, "-m", "aiboxctl.engine.dryrun"], input_text=json.dumps(request),
                      timeout=timeout)
    if res.timed_out:
        raise DryRunFailed(f"llama.cpp {mode} run timed out after {timeout:.0f} s")
    doc = None
    for line in reversed(res.stdout.splitlines()):
        if line.startswith("{"):
            doc = json.loads(line)
            break
    if doc is None or "error" in doc:
        reason = (doc or {}).get("error") or _last_error(res.stderr) or res.failure_reason()
        raise DryRunFailed(f"llama.cpp {mode} run failed: {reason}",
                           hint="check the model file and parameters (aiboxctl inspect FILE)")
    seconds = (time.monotonic() - started) / max(1, len(params))
    out: list[OracleResult | DryRunFailed] = []
    for item in doc["results"]:
        if "error" in item:
            out.append(DryRunFailed(f"llama.cpp {mode} run failed: {item['error']}"))
            continue
        parsed = parse_buffer_lines(item["lines"], mode=mode, model_bytes=doc["model_bytes"])
        devices = tuple(OracleDevice(name, **vals) for name, vals in parsed["devices"].items())
        out.append(OracleResult(mode, devices, seconds, parsed["flash_attn"], tuple(parsed["kv_cells"]),
                                tuple(item["lines"]) if keep_lines else ()))
    if len(params) == 1 and isinstance(out[0], DryRunFailed):
        raise out[0]
    return out


def with_dry_run(est: MemoryEstimate, dry: OracleResult) -> MemoryEstimate:
    """The estimate with llama.cpp's measured compute and output buffers in place of the
    model's (weights, KV and recurrent state are header arithmetic in both)."""
    from dataclasses import replace

    devices = []
    for d in est.devices:
        o = dry.device(d.device)
        measured = d.device == HOST or o.compute > 0
        devices.append(replace(d, compute=o.compute if measured else d.compute,
                               output=o.output if d.device == HOST else d.output))
    return replace(est, devices=tuple(devices),
                   notes=(*est.notes, "compute and output buffers from llama.cpp's dry run"))


def _last_error(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "error" in ln.lower() or "assert" in ln.lower() or "failed" in ln.lower():
            return ln.strip()[:300]
    return lines[-1].strip()[:300] if lines else ""
