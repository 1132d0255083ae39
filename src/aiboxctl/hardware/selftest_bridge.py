"""``probe --selftest``: turn the engine self-test (aiboxctl.engine.selftest, contract 5) into
verdicts on the CPU's risky ISA paths.

The self-test decodes a few tokens of a small embedded model in a child process, first with the
configured options (weight repacking on: llama.cpp's extra buffer types, AMX where the build has
it), then with fallbacks when the child dies by a signal. It is started by module name
(``python -m aiboxctl.engine.introspect --selftest SETTINGS_JSON``, which picks the embedded test
model, runs the whole ladder and prints it as JSON): the hardware layer imports neither the
engine nor the hub. A path counts as verified only if the installed build really uses it
(llama.cpp's system info says ``AMX_INT8 = 1`` / ``AVX512 = 1``); otherwise the run proves
nothing about it and it stays "not run".
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

from aiboxctl.hardware.engine_build import ask_engine
from aiboxctl.hardware.model import FAILED, NOT_RUN, PASSED, CpuInfo, EngineBuild, SelfTestSummary

_MARKERS = {"amx": "AMX_INT8 = 1", "avx512": "AVX512 = 1"}
# Weight repacking on: the path that faults where AMX is advertised but does not execute.
SELFTEST_SETTINGS = {"n_ctx": 256, "parallel": 1, "n_batch": 64, "n_ubatch": 64, "repack": True}
# Up to four attempts (configured, repack off, safe, CPU only) of at most 600 s each.
SELFTEST_TIMEOUT_S = 4 * 600.0 + 60.0


@dataclass(frozen=True)
class SelfTestStep:
    """One attempt of the engine self-test, as the child reported it."""

    name: str  # "configured", "repack-off", "safe", "cpu-only"
    ok: bool
    reason: str | None


@dataclass(frozen=True)
class SelfTestRun:
    """The engine self-test's outcome (``SelfTestResult.to_dict()`` of the child), read back."""

    ok: bool
    attempts: tuple[SelfTestStep, ...]
    fallback: str | None
    fallback_reason: str | None
    system_info: str
    model: str = ""  # the embedded model it ran on


class SelfTestNotRun(Exception):
    """The self-test child could not run the self-test (the message says why)."""


class NoTestModel(SelfTestNotRun):
    """No embedded model is installed to run the self-test on."""


def selftest_run_from_dict(doc: dict[str, Any], model: str = "") -> SelfTestRun:
    steps = tuple(SelfTestStep(str(a.get("name") or "?"), bool(a.get("ok")), a.get("reason"))
                  for a in doc.get("attempts") or ())
    return SelfTestRun(bool(doc.get("ok")), steps, doc.get("fallback"), doc.get("fallback_reason"),
                       str(doc.get("system_info") or ""), model)


def run_engine_selftest(*, python: str = sys.executable, timeout: float = SELFTEST_TIMEOUT_S) -> SelfTestRun:
    """The self-test's ladder with weight repacking on, on an embedded model, in ``python``'s engine."""
    doc = ask_engine(python, ["--selftest", json.dumps(SELFTEST_SETTINGS)], timeout=timeout)
    if doc.get("selftest_model", "") is None:
        raise NoTestModel("no test model: neither an embedded one nor the demo model in the model store "
                          "(aiboxctl pull smollm2-135m-instruct)")
    if not isinstance(doc.get("selftest"), dict):
        engine = doc.get("engine") or {}
        raise SelfTestNotRun(doc.get("error") or engine.get("error") or "the self-test child gave no result")
    return selftest_run_from_dict(doc["selftest"], str(doc.get("selftest_model") or ""))


def summarize(result: SelfTestRun) -> SelfTestSummary:
    attempts = tuple(f"{a.name}: {'ok' if a.ok else a.reason}" for a in result.attempts)
    return SelfTestSummary(bool(result.ok), result.model, result.fallback, result.fallback_reason, attempts)


def isa_verdicts(result: SelfTestRun, cpu: CpuInfo, engine: EngineBuild) -> dict[str, tuple[str, str]]:
    """name → (verified status, detail) for each advertised risky path."""
    info = " ".join(filter(None, (result.system_info, engine.system_info)))
    attempts = list(result.attempts)
    first = attempts[0] if attempts else None
    out: dict[str, tuple[str, str]] = {}
    for path in cpu.isa_paths:
        if not path.advertised:
            continue
        marker = _MARKERS.get(path.name)
        if marker and marker not in info:
            out[path.name] = (NOT_RUN, f"the installed llama.cpp build does not use {path.name.upper()}, "
                                       "so the self-test cannot exercise it")
            continue
        if path.name == "amx":
            # AMX is used through weight repacking: the first attempt has it on.
            if first is not None and first.ok:
                out[path.name] = (PASSED, "decoded with weight repacking (AMX) on")
            elif result.ok:
                out[path.name] = (FAILED, f"{first.reason} with weight repacking on; "
                                          f"the engine runs with {result.fallback}")
            else:
                out[path.name] = (FAILED, f"every self-test attempt failed: {result.fallback_reason}")
        else:
            if result.ok:
                out[path.name] = (PASSED, f"decoded in the {next(a.name for a in attempts if a.ok)} attempt")
            else:
                out[path.name] = (FAILED, f"every self-test attempt failed: {result.fallback_reason}")
    return out
