"""Prove an engine configuration in a child process before serving it (contract 5).

Some CPU paths are advertised but fault when executed (on the build VM: AMX, used by
llama.cpp's weight repacking, SIGSEGVs on the first decode). A fault kills the process, so
the check runs in a child: load the model with the configured parameters and decode a few
tokens. If the child dies by a signal (SIGILL, SIGSEGV, SIGBUS, SIGABRT …) we retry with
weight repacking off, then with the other risky options off, and report the first
configuration that passed together with every attempt and why it failed.

``aiboxctl serve``, ``aiboxctl probe --selftest`` and ``aiboxctl engine install`` use
:func:`run_selftest`. The child is ``python -m aiboxctl.engine.selftest`` reading the config
as JSON on stdin and printing one JSON line.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

from aiboxctl.engine.config import EngineConfig, engine_config_from_mapping
from aiboxctl.env import Env

SELFTEST_PROMPT = "The capital of France is"
SELFTEST_TOKENS = 4


@dataclass(frozen=True)
class SelfTestAttempt:
    name: str  # "configured", "repack-off", "safe", "cpu-only"
    changes: dict[str, Any]  # settings changed from the configured ones
    ok: bool
    reason: str | None  # why it failed ("killed by SIGSEGV", the child's error line)
    signal: str | None = None  # e.g. "SIGSEGV" when the child died by a signal
    returncode: int | None = None
    seconds: float = 0.0
    tokens: tuple[int, ...] = ()  # greedy tokens the child decoded


@dataclass(frozen=True)
class SelfTestResult:
    ok: bool
    config: EngineConfig | None  # the first configuration that passed
    attempts: tuple[SelfTestAttempt, ...]
    fallback: str | None = None  # name of the fallback taken, None when the configured one passed
    fallback_reason: str | None = None  # why the configured one (and earlier fallbacks) failed
    system_info: str = ""  # llama.cpp's view of the CPU features it uses (from the passing child)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "fallback": self.fallback,
            "fallback_reason": self.fallback_reason,
            "system_info": self.system_info,
            "attempts": [a.__dict__ | {"tokens": list(a.tokens)} for a in self.attempts],
            "config": self.config.to_dict() if self.config else None,
        }


def candidate_configs(config: EngineConfig) -> list[tuple[str, EngineConfig, dict[str, Any]]]:
    """The fallback ladder: configured, repack off, every risky option off, CPU only."""
    steps: list[tuple[str, dict[str, Any]]] = [
        ("configured", {}),
        ("repack-off", {"repack": False}),
        ("safe", {"repack": False, "flash_attn": "off", "cache_type_k": "f16", "cache_type_v": "f16",
                  "mlock": False}),
        ("cpu-only", {"repack": False, "flash_attn": "off", "cache_type_k": "f16", "cache_type_v": "f16",
                      "mlock": False, "n_gpu_layers": 0, "tensor_split": ()}),
    ]
    out: list[tuple[str, EngineConfig, dict[str, Any]]] = []
    seen: list[EngineConfig] = []
    for name, changes in steps:
        cfg = config.replace(**changes)
        if cfg in seen:
            continue
        seen.append(cfg)
        actual = {k: v for k, v in changes.items() if getattr(config, k) != v}
        out.append((name, cfg, actual))
    return out


def _signal_name(returncode: int | None) -> str | None:
    if returncode is None:
        return None
    num = -returncode if returncode < 0 else (returncode - 128 if 128 < returncode < 160 else None)
    if num is None:
        return None
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def run_child(config: EngineConfig, *, timeout: float = 600.0) -> tuple[SelfTestAttempt, str]:
    """Run one attempt in a child process. Returns the attempt (name left empty) and the
    child's system info line."""
    from aiboxctl.system import run_command

    started = time.monotonic()
    res = run_command([sys.executable, "-m", "aiboxctl.engine.selftest"], timeout=timeout,
                      input_text=json.dumps(config.to_dict()))
    seconds = round(time.monotonic() - started, 3)
    payload: dict[str, Any] = {}
    for line in reversed(res.stdout.strip().splitlines()):
        try:
            payload = json.loads(line)
            break
        except ValueError:
            continue
    sig = _signal_name(res.returncode)
    if res.ok and payload.get("ok"):
        return SelfTestAttempt("", {}, True, None, None, 0, seconds, tuple(payload.get("tokens", ()))), \
            payload.get("system_info", "")
    if res.timed_out:
        reason = f"timed out after {timeout:.0f} s"
    elif sig:
        reason = f"killed by {sig}"
    elif payload.get("error"):
        reason = str(payload["error"])
    else:
        reason = res.failure_reason() or "failed"
    return SelfTestAttempt("", {}, False, reason, sig, res.returncode, seconds), ""


def run_selftest(config: EngineConfig, *, timeout: float = 600.0) -> SelfTestResult:
    """Prove ``config`` (or the first safe fallback) in child processes.

    Only a crash (death by a signal) moves on to the next fallback: an ordinary error such as
    a missing model file would fail the same way with every option, so it stops the ladder."""
    attempts: list[SelfTestAttempt] = []
    for name, cfg, changes in candidate_configs(config):
        attempt, info = run_child(cfg, timeout=timeout)
        attempt = SelfTestAttempt(name, changes, attempt.ok, attempt.reason, attempt.signal,
                                  attempt.returncode, attempt.seconds, attempt.tokens)
        attempts.append(attempt)
        if attempt.ok:
            failed = [f"{a.name}: {a.reason}" for a in attempts[:-1]]
            return SelfTestResult(True, cfg, tuple(attempts), None if name == "configured" else name,
                                  "; ".join(failed) or None, info)
        if attempt.signal is None:
            break
    failed = [f"{a.name}: {a.reason}" for a in attempts]
    return SelfTestResult(False, None, tuple(attempts), None, "; ".join(failed), "")


# --- the child --------------------------------------------------------------------------

def _injected_fault(config: EngineConfig) -> bool:
    """Env.SELFTEST_FAULT lets tests make the child crash like a faulting ISA path would."""
    wanted = {w.strip() for w in os.environ.get(Env.SELFTEST_FAULT, "").split(",") if w.strip()}
    return bool(
        "always" in wanted
        or ("repack" in wanted and config.repack)
        or ("flash_attn" in wanted and config.flash_attn != "off")
        or ("gpu" in wanted and config.n_gpu_layers != 0)
    )


def child_main() -> int:
    try:
        config = engine_config_from_mapping(json.loads(sys.stdin.read()), source="self-test config")
        from aiboxctl.engine.llama import LlamaRuntime, system_info

        if config.role != "chat":
            return _pooled_child(config)
        rt = LlamaRuntime(config)
        L = rt.lib
        prompt = rt.tokenize(SELFTEST_PROMPT, add_special=True)
        batch = L.llama_batch_init(max(len(prompt), 1), 0, 1)
        sampler = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        L.llama_sampler_chain_add(sampler, L.llama_sampler_init_greedy())
        if _injected_fault(config):
            os.kill(os.getpid(), signal.SIGSEGV)
        out: list[int] = []
        feed = prompt
        pos = 0
        for _ in range(SELFTEST_TOKENS):
            batch.n_tokens = len(feed)
            for i, tok in enumerate(feed):
                batch.token[i] = tok
                batch.pos[i] = pos + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = i == len(feed) - 1
            rc = L.llama_decode(rt.ctx, batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")
            pos += len(feed)
            tok = int(L.llama_sampler_sample(sampler, rt.ctx, len(feed) - 1))
            out.append(tok)
            if rt.is_eog(tok):
                break
            feed = [tok]
        L.llama_sampler_free(sampler)
        L.llama_batch_free(batch)
        info = system_info()
        rt.close()
        print(json.dumps({"ok": True, "tokens": out, "system_info": info}), flush=True)
        return 0
    except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
        message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        print(json.dumps({"ok": False, "error": message}), flush=True)
        return 1


def _pooled_child(config: EngineConfig) -> int:
    """An embedding or rerank engine's proof: one pooled decode of two inputs."""
    from aiboxctl.engine.embedding import PooledRuntime
    from aiboxctl.engine.llama import system_info

    rt = PooledRuntime(config)
    if config.role == "rerank":
        inputs = [rt.rerank_tokens(SELFTEST_PROMPT, d) for d in ("Paris", "Berlin")]
    else:
        inputs = [rt.tokenize(t, add_special=True) for t in (SELFTEST_PROMPT, "Paris")]
    inputs = [rt.fit(t, truncate=True) or t for t in inputs][: rt.n_seq_max]
    if _injected_fault(config):
        os.kill(os.getpid(), signal.SIGSEGV)
    outs = rt.pooled(inputs)
    if not all(len(v) == rt.n_out and all(x == x for x in v) for v in outs):
        raise RuntimeError("the pooled outputs are not numbers")
    info = system_info()
    rt.close()
    print(json.dumps({"ok": True, "tokens": [], "system_info": info}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(child_main())
