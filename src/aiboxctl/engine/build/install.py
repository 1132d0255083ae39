"""``engine install``: put the llama-cpp-python wheel a box needs into aiboxctl's environment
and prove it, or put the previous engine back.

1. the :class:`~aiboxctl.engine.build.specs.BuildSpec` from the caller's probe (or ``--backend``);
2. the wheel from the cache (:mod:`~aiboxctl.engine.build.cache`), else the toolchain check and a
   build from the sdist (:mod:`~aiboxctl.engine.build.compile`, also cached);
3. the installed engine is kept as the *previous* wheel (the recorded one, or a snapshot of the
   installed files when aiboxctl did not install it);
4. ``pip install`` into aiboxctl's own environment, then the engine self-test with offload on,
   in a child of that interpreter (:mod:`~aiboxctl.engine.build.verify`);
5. if the self-test fails the previous wheel goes back and the error says why; either way the
   outcome is recorded (:mod:`~aiboxctl.engine.build.record`).

``backend_gap``/``ensure_engine`` let ``aiboxctl install`` build the missing backend first.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import platform
import sys
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiboxctl.engine.build.cache import WHEEL_PREFIX, CachedWheel, WheelCache, pinned_version, wheel_backend
from aiboxctl.engine.build.compile import Progress, build_wheel, no_progress, pip_failure_line, run_pip
from aiboxctl.engine.build.record import read_record, write_record
from aiboxctl.engine.build.specs import BuildSpec, build_spec
from aiboxctl.engine.build.toolchain import require_toolchain
from aiboxctl.engine.build.verify import inspect_engine, selftest_model, verify
from aiboxctl.errors import AiboxError, UsageError, VerificationFailed
from aiboxctl.hardware.backends import backend_key, registry_names
from aiboxctl.hub.verify import sha256_file


# --- the installed engine, kept to be put back -----------------------------------------------

def snapshot_installed(engine: dict[str, Any], cache: WheelCache) -> CachedWheel | None:
    """Pack the installed llama-cpp-python (files listed in its RECORD) into a wheel, so it can
    be put back if the new one fails. None when nothing is installed."""
    dist_info = Path(engine["dist_info"]) if engine.get("dist_info") else None
    if dist_info is None or not (dist_info / "RECORD").is_file():
        return None
    version = engine.get("version") or "unknown"
    base = dist_info.parent
    tags = [ln.split(":", 1)[1].strip() for ln in (dist_info / "WHEEL").read_text().splitlines()
            if ln.startswith("Tag:")] if (dist_info / "WHEEL").is_file() else []
    tag = tags[0] if tags else f"py3-none-linux_{platform.machine()}"
    record_name = f"{dist_info.name}/RECORD"
    skip = {f"{dist_info.name}/{n}" for n in ("INSTALLER", "REQUESTED", "direct_url.json", "RECORD")}
    rows = list(csv.reader(io.StringIO((dist_info / "RECORD").read_text())))
    digest = hashlib.sha256((dist_info / "RECORD").read_bytes()).hexdigest()[:12]
    key = f"snapshot-{digest}"
    found = cache.find(version, key)
    if found:
        return found
    folder = cache.dir_for(version, key)
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{WHEEL_PREFIX}{version}-{tag}.whl"
    records: list[list[str]] = []
    with zipfile.ZipFile(wheel.with_suffix(".partial"), "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for row in rows:
            if not row:
                continue
            rel = row[0]
            if rel in skip or rel.startswith("..") or "__pycache__" in rel or os.path.isabs(rel):
                continue
            src = base / rel
            if not src.is_file():
                continue
            data = src.read_bytes()
            zf.writestr(rel, data)
            h = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            records.append([rel, f"sha256={h}", str(len(data))])
        records.append([record_name, "", ""])
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(records)
        zf.writestr(record_name, buf.getvalue())
    os.replace(wheel.with_suffix(".partial"), wheel)
    return cache.add(wheel, CachedWheel(path=wheel, version=version, key=key, backend=None, origin="snapshot"))


def pip_install(python: str, wheel: Path) -> None:
    res = run_pip(python, "install", "--no-deps", "--force-reinstall", "--no-cache-dir", str(wheel))
    if not res.ok:
        raise AiboxError(f"pip could not install {wheel.name}: {pip_failure_line(res)}", code="pip_failed",
                         hint="aiboxctl engine status")


# --- install ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class EngineInstallResult:
    action: str  # "installed" | "unchanged"
    backend: str
    key: str
    version: str
    wheel: Path
    wheel_size_bytes: int
    built: bool  # compiled now (False: from the cache or --wheel)
    build_seconds: float | None
    cmake_args: tuple[str, ...]
    reason: str
    previous: dict[str, Any] | None
    engine: dict[str, Any]
    selftest: dict[str, Any] | None
    warnings: tuple[str, ...] = field(default_factory=tuple)


def _summary(engine: dict[str, Any]) -> dict[str, Any]:
    keys = ("version", "backends", "devices", "cpu_variants", "cpu_variant_loaded", "gpu_offload", "system_info")
    return {k: engine.get(k) for k in keys if k in engine}


def install_engine(backend: str = "auto", *, accelerators: Sequence[Any], wheel: Path | None = None,
                   architectures: Sequence[str] | None = None, model: Path | None = None,
                   python: str = sys.executable, cache: WheelCache | None = None, version: str | None = None,
                   jobs: int | None = None, confirm: Callable[[str], None] | None = None,
                   force: bool = False, progress: Progress = no_progress,
                   toolchain_check: Callable[..., Any] | None = None) -> EngineInstallResult:
    """(Re)install llama-cpp-python for ``backend`` into ``python``'s environment and prove it.

    ``accelerators``: the caller's probe (this box's, or a recorded one); they choose the build
    for ``backend="auto"`` and its architectures. ``confirm(question)`` is called before
    anything changes (it raises to refuse)."""
    cache = cache or WheelCache()
    version = version or pinned_version()
    warnings: list[str] = []
    if wheel is not None:
        wheel = Path(wheel)
        if not wheel.is_file() or not wheel.name.startswith(WHEEL_PREFIX) or wheel.suffix != ".whl":
            raise UsageError(f"Not a llama-cpp-python wheel: {wheel}", hint="pass a llama_cpp_python-*.whl file")
        given_version = wheel.name[len(WHEEL_PREFIX):].split("-", 1)[0]
        spec_backend = wheel_backend(wheel) if backend == "auto" else backend
        spec = None
        key = f"given-{sha256_file(wheel)[:12]}"
        target = cache.find(given_version, key) or cache.add(wheel, CachedWheel(
            path=wheel, version=given_version, key=key, backend=spec_backend, origin="given"))
        reason = f"the given wheel {wheel.name}"
    else:
        spec = build_spec(backend, accelerators, architectures=architectures)
        target = cache.find(version, spec.key)
        reason = spec.reason
    built = False

    tc = None
    if target is None:  # a build is needed: check the toolchain before anything else
        assert spec is not None
        tc = (toolchain_check or require_toolchain)(spec.backend, hygon=spec.hygon_dtk)

    before = inspect_engine(python).get("engine") or {}
    record = read_record()
    if (not force and target is not None and record and record.get("ok")
            and record.get("wheel_sha256") == target.sha256 and before.get("available")
            and before.get("version") == target.version and record.get("python") == python):
        return EngineInstallResult("unchanged", record.get("backend") or "?", target.key, target.version,
                                   target.path, target.size_bytes, False, target.build_seconds,
                                   target.cmake_args, "already installed and verified", None,
                                   _summary(before), record.get("selftest"))

    if target is None:
        assert spec is not None and tc is not None
        if confirm:
            confirm(f"Build llama-cpp-python {version} for {spec.key} (minutes to an hour) and install it "
                    f"into {Path(python).parent.parent}?")
        target = build_wheel(spec, version=version, cache=cache, python=python, build_env=tc.build_env,
                             extra_cmake_args=getattr(tc, "cmake_args", ()),
                             cuda_stub_include=getattr(tc, "cuda_stub_include", None), jobs=jobs, progress=progress)
        built = True
    else:
        if confirm:
            confirm(f"Install llama-cpp-python {target.version} ({target.key}) into {Path(python).parent.parent}?")
        target = cache.slim(target)  # an entry cached before slimming existed

    # What to put back if the new engine fails: the recorded wheel when it is what is
    # installed, else a snapshot of the installed files.
    previous: CachedWheel | None = None
    if before.get("available") or before.get("dist_info"):
        rec_wheel = Path(record["wheel"]) if record and record.get("wheel") else None
        if (record and record.get("ok") and rec_wheel and rec_wheel.is_file()
                and record.get("version") == before.get("version") and record.get("python") == python):
            previous = cache.load_folder(rec_wheel.parent)
        if previous is None:
            progress("keeping a copy of the installed engine, to restore it if the new one fails")
            previous = snapshot_installed(before, cache)

    check_backend = target.backend if target.backend else (None if backend == "auto" else backend)
    test_model = selftest_model(model, progress=progress)  # before anything changes
    progress(f"installing {target.path.name} ({target.key})")
    pip_install(python, target.path)
    progress("self-testing the new engine" + (" with offload on" if check_backend not in (None, "cpu") else ""))
    result = verify(python, check_backend, test_model)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    found_backends = [b for b in result.engine.get("backends", ()) if b != "CPU"]
    actual_backend = check_backend or (backend_key(found_backends[0]) if found_backends else "cpu")
    doc = {"ok": result.ok, "at": now, "python": python, "backend": actual_backend, "key": target.key,
           "version": target.version, "wheel": str(target.path), "wheel_sha256": target.sha256,
           "cmake_args": list(target.cmake_args), "reason": reason, "engine": _summary(result.engine),
           "selftest": result.selftest, "failure": result.reason}

    if not result.ok:
        restored = None
        if previous is not None:
            progress(f"the new engine failed ({result.reason}); restoring the previous one")
            try:
                pip_install(python, previous.path)
            except AiboxError as exc:
                write_record({**doc, "restored": None, "restore_error": exc.message}, current=False)
                raise VerificationFailed(
                    f"The new engine ({target.key}) failed its self-test: {result.reason}; restoring the "
                    f"previous one failed too: {exc.message}",
                    hint=f"reinstall it by hand: {python} -m pip install --force-reinstall --no-deps {previous.path}",
                    data={"record": doc}) from exc
            after = inspect_engine(python).get("engine") or {}
            restored = {"key": previous.key, "version": previous.version, "wheel": str(previous.path),
                        "available": bool(after.get("available")), "backends": after.get("backends")}
        doc["restored"] = restored
        write_record(doc, current=False)
        if restored is not None:
            prev_rec = read_record()
            if prev_rec is None or prev_rec.get("wheel") != str(previous.path):
                write_record({"ok": bool(restored["available"]), "at": now, "python": python,
                               "backend": previous.backend, "key": previous.key, "version": previous.version,
                               "wheel": str(previous.path), "wheel_sha256": previous.sha256,
                               "reason": "restored after a failed engine install", "engine": {}, "selftest": None,
                               "failure": None}, current=True)
        what = "restored the previous engine" if restored else "nothing to restore (no engine was installed before)"
        raise VerificationFailed(
            f"The new engine ({target.key}) failed its self-test: {result.reason}; {what}",
            hint="aiboxctl engine status", data={"record": doc})

    write_record(doc, current=True)
    prev = {"key": previous.key, "version": previous.version, "wheel": str(previous.path)} if previous else None
    return EngineInstallResult("installed", actual_backend, target.key, target.version, target.path,
                               target.size_bytes, built, target.build_seconds, target.cmake_args, reason,
                               prev, _summary(result.engine), result.selftest, tuple(warnings))


# --- for `aiboxctl install` ------------------------------------------------------------------

def backend_gap(*, accelerators: Sequence[Any], python: str = sys.executable) -> BuildSpec | None:
    """The build this box needs when its accelerators have a ggml backend that the installed
    engine lacks (so a plan could not offload to them); None when the engine can drive them."""
    spec = build_spec("auto", accelerators)
    if spec.backend == "cpu":
        return None
    engine = inspect_engine(python).get("engine") or {}
    names = registry_names(spec.backend)
    if engine.get("available") and any(b in names for b in engine.get("backends") or ()):
        return None
    return spec


def ensure_engine(*, confirm: Callable[[str], None], accelerators: Sequence[Any],
                  python: str = sys.executable, progress: Progress = no_progress) -> EngineInstallResult | None:
    """Build and install the engine this box's accelerators need before ``install`` plans, so
    the plan can offload (``confirm`` refuses without --yes; a missing toolchain stops with one
    line naming it). None when the installed engine already has the backend."""
    spec = backend_gap(accelerators=accelerators, python=python)
    if spec is None:
        return None
    confirm(f"This box has {spec.backend.upper()} devices but the installed engine has no "
            f"{registry_names(spec.backend)[0]} backend, so the model would run on the CPU. "
            f"Build and install the {spec.key} engine first?")
    return install_engine(spec.backend, accelerators=accelerators, python=python,
                          architectures=spec.architectures, progress=progress)

