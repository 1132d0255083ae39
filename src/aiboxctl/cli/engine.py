"""``aiboxctl engine status|install``: the llama.cpp build this box runs, and the one it needs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from aiboxctl.cli import output
from aiboxctl.cli.options import JsonOpt, YesOpt

engine_app = typer.Typer(
    help="The llama.cpp engine: which backends it has, and (re)building it for this box's accelerators.",
    no_args_is_help=True,
)

BACKEND_CHOICES = ("auto", "cpu", "cuda", "hip", "musa", "cann", "vulkan", "sycl")

HardwareOpt = Annotated[
    Optional[Path],
    typer.Option("--hardware", help="Use a recorded `probe --json` output (or a hardware profile) "
                 "instead of probing this box.", exists=True, dir_okay=False),
]


def register(app: typer.Typer) -> None:
    app.add_typer(engine_app, name="engine")


def _gib(n: Any) -> str:
    return f"{n / 2**30:.1f} GiB" if isinstance(n, (int, float)) and n else "?"


def _accelerators(hardware: Path | None) -> Any:
    """The accelerators of the recorded probe given with --hardware, else of this box."""
    if hardware is None:
        from aiboxctl.hardware.probe import probe_box

        return probe_box().accelerators
    from aiboxctl.engine.build.specs import load_accelerators

    return load_accelerators(hardware)


@engine_app.command("status")
def status(hardware: HardwareOpt = None, json_: JsonOpt = False) -> int:
    """The installed llama-cpp-python: version, backends compiled in, CPU variants, devices with memory, what this box needs, and the next command when they differ."""
    from aiboxctl.engine.build.status import engine_status

    output.set_command("engine status")
    result = engine_status(accelerators=_accelerators(hardware))

    def human(console: Any, r: Any) -> None:
        from rich.table import Table

        t = Table(show_header=False, box=None)
        t.add_row("llama-cpp-python", r.version or "not installed")
        if r.error:
            t.add_row("error", r.error)
        t.add_row("backends", ", ".join(r.backends) or "none")
        variants = ", ".join(r.cpu_variants) if r.cpu_variants else "one native CPU build"
        t.add_row("CPU variants", f"{variants} (loaded: {r.cpu_variant_loaded or '?'})")
        for d in r.devices:
            t.add_row(f"device {d['name']}", f"{d['description']} [{d['backend']}, {d['type']}] "
                      f"{_gib(d['memory_free_bytes'])} free of {_gib(d['memory_total_bytes'])}")
        t.add_row("box needs", f"{r.needed_backend}: {r.needed_reason}")
        if r.record:
            t.add_row("last install", f"{r.record.get('key')} at {r.record.get('at')} "
                      f"({'verified' if r.record.get('ok') else 'failed: ' + str(r.record.get('failure'))})")
        t.add_row("cached wheels", ", ".join(f"{w['version']}/{w['key']}" for w in r.cached_wheels) or "none")
        console.print(t)
        if r.next_command:
            console.print(f"The engine does not match this box: {'; '.join(r.differences)}. Next: {r.next_command}",
                          markup=False)
        else:
            console.print("The engine matches this box.")

    return output.emit(result, human)


@engine_app.command("install")
def install(
    backend: Annotated[str, typer.Option("--backend", help=f"{'|'.join(BACKEND_CHOICES)}; auto = what probe found.")] = "auto",
    wheel: Annotated[Optional[Path], typer.Option("--wheel", help="Install this llama-cpp-python wheel "
                     "instead of building one.", exists=True, dir_okay=False)] = None,
    arch: Annotated[Optional[str], typer.Option("--arch", help="Architectures to build for instead of "
                    "the probed ones, comma-separated (CUDA 86,89; HIP gfx928; MUSA 22; CANN ascend910b).")] = None,
    model: Annotated[Optional[Path], typer.Option("--model", help="GGUF for the self-test (default: "
                     "the embedded SmolLM2-135M).", exists=True, dir_okay=False)] = None,
    jobs: Annotated[Optional[int], typer.Option("--jobs", min=1, help="Parallel compile jobs (default: all cores).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Reinstall and self-test even when the same "
                     "wheel is installed and verified.")] = False,
    build_only: Annotated[bool, typer.Option("--build-only", help="Only build (or find) the wheel in the "
                          "cache, e.g. for another box given with --hardware; install nothing.")] = False,
    hardware: HardwareOpt = None,
    yes: YesOpt = False,
    json_: JsonOpt = False,
) -> int:
    """(Re)install llama-cpp-python compiled for this box's backend: toolchain check, cached build, install, self-test with offload on, restore the previous engine on failure."""
    from aiboxctl.engine.build.install import install_engine
    from aiboxctl.errors import UsageError

    output.set_command("engine install")
    if backend not in BACKEND_CHOICES:
        raise UsageError(f"Unknown backend {backend!r}: choose one of {', '.join(BACKEND_CHOICES)}",
                         hint="aiboxctl engine install --help")
    archs = [a.strip() for a in arch.split(",") if a.strip()] if arch else None
    if build_only:
        from aiboxctl.engine.build.compile import build_engine_wheel

        if wheel is not None:
            raise UsageError("--build-only builds a wheel; it does not take --wheel", hint="aiboxctl engine install --help")
        built = build_engine_wheel(backend, accelerators=_accelerators(hardware), architectures=archs, jobs=jobs,
                                   progress=output.note, confirm=lambda question: output.confirm(question, yes=yes))

        def human_built(console: Any, w: Any) -> None:
            how = f"built in {w.build_seconds:.0f} s" if w.build_seconds else "cached"
            console.print(f"{w.path} ({w.key}, {w.size_bytes / 2**20:.0f} MiB, {how})")

        return output.emit(built, human_built)
    result = install_engine(  # a given wheel needs no probe: its backend is read from its files
        backend, wheel=wheel, accelerators=_accelerators(hardware) if wheel is None else (), architectures=archs,
        model=model,
        jobs=jobs, force=force, progress=output.note,
        confirm=lambda question: output.confirm(question, yes=yes))

    def human(console: Any, r: Any) -> None:
        if r.action == "unchanged":
            console.print(f"llama-cpp-python {r.version} ({r.key}) is already installed and verified.")
            return
        how = f"built in {r.build_seconds:.0f} s" if r.built and r.build_seconds else "from the wheel cache"
        console.print(f"Installed llama-cpp-python {r.version} for {r.backend} ({r.key}, "
                      f"{r.wheel_size_bytes / 2**20:.0f} MiB, {how}).")
        st = r.selftest or {}
        fallback = f" (with fallback {st.get('fallback')}: {st.get('fallback_reason')})" if st.get("fallback") else ""
        console.print(f"Self-test passed{fallback}. Backends: {', '.join(r.engine.get('backends') or [])}.")
        if r.previous:
            console.print(f"Previous engine kept for rollback: {r.previous['wheel']}")

    return output.emit(result, human)
