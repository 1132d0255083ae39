"""``aiboxctl probe``: CPU, memory, disks, accelerators and what the engine build can drive."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from aiboxctl.cli import output
from aiboxctl.cli.options import JsonOpt


def register(app: typer.Typer) -> None:
    app.command("probe")(probe)


MeasureOpt = Annotated[bool, typer.Option(
    "--measure", help="Measure memory bandwidth with a short copy (a second or two) instead of asking dmidecode.")]
SelftestOpt = Annotated[bool, typer.Option(
    "--selftest", help="Run the engine self-test to verify that advertised AVX-512/AMX paths really execute.")]
FreshOpt = Annotated[bool, typer.Option(
    "--fresh", help="Re-read the llama-cpp-python build instead of using the cached answer.")]


def probe(measure: MeasureOpt = False, selftest: SelftestOpt = False, fresh: FreshOpt = False,
          json_: JsonOpt = False) -> int:
    """CPU (and which instruction sets really execute), RAM, disks, every accelerator and the
    llama.cpp backend that drives it. Vendor tools that are missing, fail or hang become
    warnings; the probe still succeeds."""
    from aiboxctl.hardware.probe import probe_box

    report = probe_box(measure_bandwidth=measure, selftest=selftest, engine_cache=not fresh)
    code = output.emit(report, _human)  # --json: the warnings are in the envelope's data
    if not output.STATE.json:
        sys.stdout.flush()  # the report first, then what went wrong while reading it
        for w in report.warnings:
            output.warn(w)
    return code


def _gib(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**30:.1f} GiB"


def _human(console: Any, r: Any) -> None:
    from rich.table import Table

    c = r.cpu
    topo = f"{c.sockets or '?'} socket(s), {c.cores or '?'} cores, {c.threads} threads, {c.numa_nodes or '?'} NUMA node(s)"
    console.print(f"[bold]CPU[/bold]  {c.model} ({c.arch}); {topo}")
    console.print(f"     ggml CPU variant: [bold]{c.ggml_variant}[/bold]; flags: {' '.join(c.flags) or '-'}")
    for p in c.isa_paths:
        if p.advertised:
            console.print(f"     {p.name.upper()}: advertised, verified: {p.verified}"
                          + (f" ({p.detail})" if p.detail else ""))
    m = r.memory
    huge = f"; hugepages {m.hugepages_free}/{m.hugepages_total} free" if m.hugepages_total else ""
    bw = m.bandwidth
    bw_text = f"{bw.gbps} GB/s ({bw.source}: {bw.detail})" if bw.gbps else f"unknown ({bw.detail})"
    console.print(f"[bold]RAM[/bold]  {_gib(m.total_bytes)} total, {_gib(m.available_bytes)} available{huge}")
    console.print(f"     bandwidth: {bw_text}")
    for d in r.disks:
        console.print(f"[bold]Disk[/bold] {d.purpose}: {d.path}: {_gib(d.free_bytes)} free of {_gib(d.total_bytes)}")

    if r.accelerators:
        t = Table(title="Accelerators", show_lines=False)
        for col in ("#", "vendor", "model", "bus id", "memory (free/total)", "driver", "NUMA", "via",
                    "ggml backend"):
            t.add_column(col)
        for a in r.accelerators:
            mem = f"{_gib(a.memory_free_bytes)} / {_gib(a.memory_total_bytes)}" if a.memory_total_bytes else "?"
            backend = a.ggml_backend or "none"
            backend += " ✓" if a.backend_in_build else (" (not in build)" if a.ggml_backend else "")
            t.add_row(str(a.index if a.index is not None else "?"), a.vendor, a.model or "?", a.pci_bus_id or "?",
                      mem, " ".join(v for v in (a.driver_version, a.runtime_version) if v) or "?",
                      str(a.numa_node) if a.numa_node is not None else "-", "+".join(a.detected_by), backend)
        console.print(t)
    else:
        console.print("[bold]Accelerators[/bold] none found")
    if r.selftest is not None:
        st = r.selftest
        verdict = "passed" if st.ok and not st.fallback else (f"passed with fallback {st.fallback}" if st.ok else "FAILED")
        console.print(f"[bold]Self-test[/bold] {verdict}" + (f" ({st.reason})" if st.reason else ""))
    e = r.engine
    if e.available:
        variant = f", CPU variant {e.cpu_variant_loaded}" if e.cpu_variant_loaded else ""
        console.print(f"[bold]Engine[/bold] llama-cpp-python {e.llama_cpp_python_version}: backends "
                      f"{', '.join(e.backends) or 'none'}{variant}")
    else:
        console.print(f"[bold]Engine[/bold] unavailable: {e.error}")
    console.print(f"[bold]Serving[/bold] {r.serving.reason}", markup=True)
