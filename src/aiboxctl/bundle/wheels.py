"""Collect the wheels a box needs to run aiboxctl offline, for a target Python and platform.

* aiboxctl's own wheel is built with ``pip wheel --no-deps`` from the source it was installed
  from (PEP 610 ``direct_url.json``: a checkout, editable or not), or taken from the wheel cache.
* llama-cpp-python has only an sdist on PyPI, so its wheel must come from a local build: the
  state wheel cache (where ``aiboxctl engine build`` keeps builds; a portable build with
  runtime-dispatched CPU variants is preferred) or pip's own wheel cache, or ``--engine-wheel``.
* every other dependency: ``pip download --only-binary=:all:`` for the target tags, resolving
  aiboxctl's wheel itself, so the set is exactly what ``pip install --no-index`` will ask for.
"""

from __future__ import annotations

import json
import platform
import re
import shutil
import sys
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse

from aiboxctl.bundle.manifest import TargetPlatform
from aiboxctl.errors import AiboxError
from aiboxctl.system import run_command

ENGINE_DIST = "llama_cpp_python"
_PIP_TIMEOUT_S = 1800.0
_VARIANT_RE = re.compile(r"(?:^|/)libggml-cpu-([a-z0-9_]+)\.so$")


class WheelError(AiboxError):
    code = "wheels_failed"


@dataclass(frozen=True)
class EngineWheel:
    path: Path
    build: str  # "portable" (runtime-dispatched CPU variants) | "native" (built for one CPU)
    cpu_variants: tuple[str, ...]
    origin: str  # where it was found

    def to_dict(self) -> dict:
        return {"file": self.path.name, "build": self.build, "cpu_variants": list(self.cpu_variants),
                "origin": self.origin}


@dataclass(frozen=True)
class WheelSet:
    folder: Path
    wheels: tuple[Path, ...]
    engine: EngineWheel
    warnings: tuple[str, ...] = ()


def _pip(*args: str, timeout: float = _PIP_TIMEOUT_S):
    return run_command([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], timeout=timeout)


def _wheel_tags(path: Path) -> tuple[str, str, str]:
    """(python, abi, platform) tags of a wheel file name (compressed tag sets kept dotted)."""
    parts = path.name[:-4].split("-")
    return parts[-3], parts[-2], parts[-1]


def _wheel_version(path: Path) -> str:
    return path.name.split("-")[1]


def describe_engine_wheel(path: Path, origin: str) -> EngineWheel:
    """A build with ``GGML_CPU_ALL_VARIANTS`` ships one ``libggml-cpu-<variant>.so`` per CPU
    generation and picks one at run time; a native build ships a single ``libggml-cpu.so``."""
    with zipfile.ZipFile(path) as zf:
        variants = sorted({m.group(1) for n in zf.namelist() if (m := _VARIANT_RE.search(n))})
    return EngineWheel(path=path, build="portable" if variants else "native", cpu_variants=tuple(variants),
                       origin=origin)


def required_engine_version() -> str | None:
    """The llama-cpp-python version aiboxctl pins (its metadata says ``==X``)."""
    for req in metadata.requires("aiboxctl") or ():
        m = re.match(r"\s*llama[-_.]cpp[-_.]python\s*==\s*([\w.]+)\s*(;.*)?$", req, re.I)
        if m and not (m.group(2) and "extra" in m.group(2)):
            return m.group(1)
    return None


def _arch_ok(path: Path, target: TargetPlatform) -> bool:
    platforms = set(_wheel_tags(path)[2].split("."))
    return bool(platforms & set(target.pip_platforms())) or platforms == {"any"}


def target_engine_key(accelerators) -> tuple[str, str]:
    """(wheel-cache key, why) of the llama.cpp build the target needs (``aiboxctl engine``'s rules):
    ``cpu-portable`` for a CPU box, else the accelerator's backend and architectures."""
    from aiboxctl.engine.build.specs import build_spec

    spec = build_spec("auto", list(accelerators or ()))
    return spec.key, spec.reason


def _key_backend(key: str) -> str:
    """The ggml backend of a wheel-cache key ("cann-ascend910b" → "cann", "cpu-portable" → "cpu")."""
    return key.split("-", 1)[0]


def _backend_words(backend: str) -> str:
    return "a CPU-only build" if backend == "cpu" else f"a {backend.upper()} build"


def make_engine_hint(target: TargetPlatform, key: str) -> str:
    """Exactly how to make the missing wheel: where, and with which command."""
    backend = _key_backend(key)
    where = ("here" if target.arch == platform.machine() and backend == "cpu"
             else f"on an {target.arch} machine" + ("" if backend == "cpu" else f" with the {backend.upper()} toolkit "
                                                    "(the box itself, or one like it)"))
    return (f"build it {where}: aiboxctl engine install --backend {backend} --build-only "
            "(the wheel lands in the engine wheel cache), then pack there or pass the wheel with --engine-wheel PATH")


def engine_wheel_mismatch(wheel: Path, target: TargetPlatform, *, key: str, why: str = "",
                          box: str = "the target") -> list[str]:
    """Why ``wheel`` cannot run the target's engine: its architecture, its backend (empty: it fits)."""
    from aiboxctl.engine.build.cache import wheel_backend

    problems = []
    if not _arch_ok(wheel, target):
        built = _wheel_tags(wheel)[2].replace(".", ", ")
        problems.append(f"it is built for {built} and {box} is {target.arch} ({target.platform})")
    have, need = wheel_backend(wheel), _key_backend(key)
    if have != need:
        problems.append(f"it is {_backend_words(have)} and {box} needs {_backend_words(need)}"
                        + (f" ({why})" if why else ""))
    return problems


def find_engine_wheel(target: TargetPlatform, *, explicit: Path | None = None, key: str = "cpu-portable",
                      cache_root: Path | None = None, why: str = "", box: str = "the target") -> EngineWheel:
    """The llama-cpp-python wheel to bundle: ``explicit`` (refused when its architecture or its
    backend does not fit the target); else the build for the target's backend (``key``) from the
    engine wheel cache (where ``aiboxctl engine install`` keeps its builds); else, for a CPU
    target, pip's own wheel cache (a native build: warned about)."""
    from aiboxctl.engine.build.cache import WheelCache

    version = required_engine_version()
    lacks = ("a bundle without it would lack the llama.cpp engine the box runs"
             + (f" ({why})" if why else "") + ", so the box could not serve")
    if explicit is not None:
        explicit = Path(explicit)
        if not explicit.is_file() or not explicit.name.startswith(ENGINE_DIST + "-"):
            raise WheelError(f"--engine-wheel {explicit} is not a llama_cpp_python wheel", code="usage")
        problems = engine_wheel_mismatch(explicit, target, key=key, why=why, box=box)
        if problems:
            raise WheelError(f"--engine-wheel {explicit.name} does not fit {box}: {'; '.join(problems)}",
                             code="engine_wheel_mismatch", hint=make_engine_hint(target, key))
        return describe_engine_wheel(explicit, "given")
    cache = WheelCache(cache_root)
    for entry in cache.entries():
        if entry.key == key and (version is None or entry.version == version) and _arch_ok(entry.path, target):
            return describe_engine_wheel(entry.path, f"engine wheel cache ({key})")
    if key != "cpu-portable":
        raise WheelError(
            f"{box} needs {_backend_words(_key_backend(key))} of llama-cpp-python {version or ''} for "
            f"{target.arch} ({key}) and the engine wheel cache ({cache.root}) has none: {lacks}",
            code="engine_wheel_missing", hint=make_engine_hint(target, key))
    res = _pip("cache", "list", "--format=abspath", ENGINE_DIST, timeout=60)
    candidates = [describe_engine_wheel(Path(line.strip()), "pip wheel cache")
                  for line in (res.stdout.splitlines() if res.ok else [])
                  if line.strip().endswith(".whl") and Path(line.strip()).is_file()]
    usable = [c for c in candidates if (version is None or _wheel_version(c.path) == version) and _arch_ok(c.path, target)
              and not engine_wheel_mismatch(c.path, target, key=key)]
    if not usable:
        raise WheelError(
            f"no llama-cpp-python {version or ''} CPU wheel for {target.platform} was found "
            f"(PyPI ships only its source; it must be built once): {lacks}", code="engine_wheel_missing",
            hint=make_engine_hint(target, key))
    usable.sort(key=lambda c: (c.build != "portable", -c.path.stat().st_mtime))
    return usable[0]


def _source_dir() -> Path | None:
    """Where the installed aiboxctl came from, when it was a local folder (PEP 610)."""
    try:
        raw = metadata.distribution("aiboxctl").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return None
    if not raw:
        return None
    doc = json.loads(raw)
    url = urlparse(doc.get("url", ""))
    if url.scheme != "file" or "dir_info" not in doc:
        return None
    path = Path(unquote(url.path))
    return path if (path / "pyproject.toml").is_file() else None


def build_self_wheel(dest: Path, *, cache_dir: Path | None = None) -> Path:
    """aiboxctl's own wheel, of the installed version."""
    from aiboxctl import __version__

    dest.mkdir(parents=True, exist_ok=True)
    source = _source_dir()
    if source is not None:
        res = _pip("wheel", "--no-deps", "--quiet", "-w", str(dest), str(source))
        built = dest / f"aiboxctl-{__version__}-py3-none-any.whl"
        if not res.ok or not built.is_file():
            raise WheelError(f"could not build aiboxctl's wheel from {source}: {res.failure_reason()}",
                             hint=f"try it by hand: pip wheel --no-deps -w /tmp {source}")
        return built
    cached = cache_dir / f"aiboxctl-{__version__}-py3-none-any.whl" if cache_dir else None
    if cached is not None and cached.is_file():
        return Path(shutil.copy2(cached, dest / cached.name))
    raise WheelError(
        "cannot find aiboxctl's source to build its own wheel (it was not installed from a folder)",
        code="self_wheel_missing",
        hint=f"put aiboxctl-{__version__}-py3-none-any.whl into {cache_dir or 'the wheel cache'}, "
             "or install aiboxctl from its source folder")


def native_engine_warning(engine: EngineWheel) -> str | None:
    """What a bundle with a native engine build risks, and the next step that helps (never
    --engine-wheel to someone who gave one)."""
    if engine.build == "portable":
        return None
    given = engine.origin == "given"
    return (f"the bundled llama-cpp-python wheel ({engine.path.name}, "
            f"{'given with --engine-wheel' if given else 'from the ' + engine.origin}) is a native "
            "build of the machine that built it: it may stop with SIGILL on an older CPU; build the portable "
            "one (GGML_NATIVE=OFF, GGML_BACKEND_DL, GGML_CPU_ALL_VARIANTS) with `aiboxctl engine install "
            "--backend cpu --build-only`, then "
            + ("pass that wheel to --engine-wheel instead" if given else "pack again (or pass it with --engine-wheel)"))


def collect_wheels(target: TargetPlatform, dest: Path, *, engine: EngineWheel,
                   extra_requirements: tuple[str, ...] = (), cache_dir: Path | None = None) -> WheelSet:
    """Fill ``dest`` with every wheel ``pip install --no-index aiboxctl`` needs on the target,
    ``engine`` (from :func:`find_engine_wheel`) as its llama-cpp-python."""
    dest.mkdir(parents=True, exist_ok=True)
    warnings = []
    warning = native_engine_warning(engine)
    if warning:
        warnings.append(warning)
    local_engine = dest / engine.path.name
    if engine.path.resolve() != local_engine.resolve():
        shutil.copyfile(engine.path, local_engine)
    self_wheel = build_self_wheel(dest, cache_dir=cache_dir)
    argv = ["download", "--only-binary=:all:", "--python-version", target.python,
            "--implementation", target.implementation, "--dest", str(dest), "--find-links", str(dest)]
    for plat in target.pip_platforms():
        argv += ["--platform", plat]
    res = _pip(*argv, str(self_wheel), *extra_requirements)
    if not res.ok:
        tail = [ln for ln in (res.stderr + res.stdout).splitlines()
                if ln.startswith("ERROR") or "conflict is caused" in ln or "depends on" in ln]
        raise WheelError(
            f"pip could not collect wheels for {target.describe()}: "
            f"{'; '.join(tail[:3]) or res.failure_reason()}",
            hint="check access to PyPI (or PIP_INDEX_URL), and that every dependency ships a wheel for the target")
    engines = sorted(dest.glob(f"{ENGINE_DIST}-*.whl"))
    if [p.name for p in engines] != [engine.path.name]:
        raise WheelError(f"expected exactly the chosen llama-cpp-python wheel in {dest}, found {[p.name for p in engines]}")
    engine = EngineWheel(path=local_engine, build=engine.build, cpu_variants=engine.cpu_variants, origin=engine.origin)
    return WheelSet(folder=dest, wheels=tuple(sorted(dest.glob("*.whl"))), engine=engine, warnings=tuple(warnings))
