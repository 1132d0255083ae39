"""``probe_box``: the whole probe — CPU, memory, disks, accelerators (sysfs, then each vendor's
own tool, concurrently, each with a timeout) and what the installed engine can drive.

Nothing here raises for a broken machine: a missing, failing, hanging or garbage-printing tool,
an unreadable sysfs file or NVML failing to initialise become sentences in ``warnings`` and
the device is still listed from sysfs.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import replace
from pathlib import Path

from aiboxctl.env import Env
from aiboxctl.hardware import backends
from aiboxctl.hardware.cpu import read_cpu
from aiboxctl.hardware.disks import read_disks
from aiboxctl.hardware.engine_build import read_engine_build
from aiboxctl.hardware.memory import dmidecode_bandwidth, measure_bandwidth, read_memory
from aiboxctl.hardware.model import (Accelerator, Bandwidth, CpuInfo, EngineBuild, HardwareReport,
                                     SelfTestSummary, ServingDecision)
from aiboxctl.hardware.pci import VENDOR_BY_KEY, VENDOR_ID_BY_KEY, PciDevice, scan_pci
from aiboxctl.hardware.tools import Background, ToolDevice, ToolReport, find_tool

DEFAULT_TOOL_TIMEOUT = 5.0

# vendor key → module with query(devices, timeout); the tool names say whether to try a vendor
# when sysfs cannot be read. Intel GPUs are described from sysfs alone. Kunlunxin's xpu-smi is
# only run when sysfs shows a Kunlunxin device (Intel's tool has the same name).
VENDOR_MODULES: dict[str, tuple[str, tuple[str, ...]]] = {
    "nvidia": ("aiboxctl.hardware.nvidia", ("nvidia-smi",)),
    "amd": ("aiboxctl.hardware.amd", ("rocm-smi", "amd-smi")),
    "hygon": ("aiboxctl.hardware.hygon", ("hy-smi",)),
    "huawei": ("aiboxctl.hardware.ascend", ("npu-smi",)),
    "metax": ("aiboxctl.hardware.metax", ("mx-smi",)),
    "mthreads": ("aiboxctl.hardware.mthreads", ("mthreads-gmi",)),
    "iluvatar": ("aiboxctl.hardware.iluvatar", ("ixsmi",)),
    "cambricon": ("aiboxctl.hardware.cambricon", ("cnmon",)),
    "kunlunxin": ("aiboxctl.hardware.kunlunxin", ()),
    "enflame": ("aiboxctl.hardware.enflame", ("efsmi",)),
}
_VENDOR_ORDER = list(VENDOR_BY_KEY)


def tool_timeout() -> float:
    try:
        return max(0.1, float(os.environ.get(Env.TOOL_TIMEOUT) or DEFAULT_TOOL_TIMEOUT))
    except ValueError:
        return DEFAULT_TOOL_TIMEOUT


def _query_vendor(key: str, devices: list[PciDevice], timeout: float) -> ToolReport:
    module = importlib.import_module(VENDOR_MODULES[key][0])  # a broken module of ours fails loudly
    try:
        return module.query(devices, timeout)
    except Exception as exc:  # noqa: BLE001 - a bug in one vendor's parser must not sink the probe
        return ToolReport("", (), (f"{VENDOR_BY_KEY[key].name} query failed: {type(exc).__name__}: {exc}",))


def probe_box(sysfs_root: str | Path | None = None, proc_root: str | Path | None = None, *,
              measure_bandwidth: bool = False, selftest: bool = False,
              engine_cache: bool = True) -> HardwareReport:
    sysfs = Path(sysfs_root or os.environ.get(Env.SYSFS_ROOT) or "/sys")
    proc = Path(proc_root or os.environ.get(Env.PROC_ROOT) or "/proc")
    timeout = tool_timeout()
    warnings: list[str] = []

    pci = scan_pci(sysfs, warnings)
    by_vendor: dict[str, list[PciDevice]] = {}
    for dev in pci or ():
        by_vendor.setdefault(dev.vendor.key, []).append(dev)
    if pci is None:  # no sysfs: ask every vendor whose tool is installed
        to_query = [k for k, (_, tools) in VENDOR_MODULES.items() if any(find_tool(t) for t in tools)]
    else:
        to_query = [k for k in by_vendor if k in VENDOR_MODULES]

    from aiboxctl.paths import StatePaths

    state = StatePaths.from_env()
    # Vendor tools (and dmidecode) run in threads while this one reads /proc, sysfs and the
    # engine build; a hung tool costs its timeout once, not once per vendor.
    dmi = Background(dmidecode_bandwidth, timeout) if not measure_bandwidth and _is_root() and find_tool(
        "dmidecode", ("/usr/sbin", "/sbin")) else None
    tools = {k: Background(_query_vendor, k, by_vendor.get(k, []), timeout) for k in to_query}
    engine = read_engine_build(use_cache=engine_cache, cache_dir=state.engine)
    cpu = read_cpu(proc, sysfs, warnings)
    disks = read_disks(state.models, warnings)
    reports = {k: t.result() for k, t in tools.items()}
    if measure_bandwidth:
        bandwidth = measure_bandwidth_safely(warnings)
    elif dmi is not None:
        bandwidth = dmi.result()
    elif not _is_root():
        bandwidth = Bandwidth(None, "unknown", "dmidecode needs root; run `aiboxctl probe --measure` to measure")
    else:
        bandwidth = Bandwidth(None, "unknown", "dmidecode is not installed; `aiboxctl probe --measure` measures")
    memory = read_memory(proc, warnings, bandwidth)

    accelerators: list[Accelerator] = []
    for key in sorted(set(by_vendor) | set(reports), key=_VENDOR_ORDER.index):
        accelerators += _merge(key, by_vendor.get(key, []), reports.get(key), engine, warnings)
    if engine.error:
        warnings.append(f"engine build unknown: {engine.error}")
    summary = None
    if selftest:
        cpu, summary = _run_selftest(cpu, engine, warnings)
    serving = decide_serving(accelerators, engine, cpu.ggml_variant)
    return HardwareReport(cpu, memory, disks, tuple(accelerators), engine, serving, tuple(warnings), summary)


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def measure_bandwidth_safely(warnings: list[str]) -> Bandwidth:
    try:
        return measure_bandwidth()
    except (ImportError, MemoryError) as exc:
        warnings.append(f"bandwidth not measured: {type(exc).__name__}: {exc}")
        return Bandwidth(None, "unknown", f"measurement failed: {exc}")


def _merge(key: str, pci_devs: list[PciDevice], report: ToolReport | None, engine: EngineBuild,
           warnings: list[str]) -> list[Accelerator]:
    vendor = VENDOR_BY_KEY[key]
    backend, in_build = backends.backend_for(key, engine.backends)
    tool_devs = list(report.devices) if report else []
    source = report.source if report else ""
    if report:
        warnings.extend(f"{vendor.name}: {w}" for w in report.warnings)
    if report and not report.source and pci_devs:
        warnings.append(f"{vendor.name}: {len(pci_devs)} device(s) listed from PCI sysfs only "
                        "(model and memory unknown)")
    elif report is None and pci_devs and key != "intel":
        warnings.append(f"{vendor.name}: no vendor tool support; listed from PCI sysfs only")

    pairs: list[tuple[PciDevice | None, ToolDevice | None, str | None]] = []
    unmatched_pci = list(pci_devs)
    by_bus = {d.bus_id: d for d in pci_devs}
    loose: list[ToolDevice] = []
    for td in tool_devs:
        dev = by_bus.get(td.bus_id) if td.bus_id else None
        if dev is not None and dev in unmatched_pci:
            unmatched_pci.remove(dev)
            pairs.append((dev, td, None))
        else:
            loose.append(td)
    for td in sorted(loose, key=lambda d: (d.index is None, d.index or 0)):
        if td.bus_id is None and unmatched_pci:
            pairs.append((unmatched_pci.pop(0), td, f"matched to its PCI device by order ({source} gives no bus id)"))
        else:
            pairs.append((None, td, None))
    if tool_devs and unmatched_pci:
        warnings.append(f"{vendor.name}: {', '.join(d.bus_id for d in unmatched_pci)} in PCI sysfs but not "
                        f"listed by {source}")
    pairs += [(dev, None, None) for dev in unmatched_pci]

    out = []
    for position, (dev, td, note) in enumerate(pairs):
        detected = tuple(dict.fromkeys(s for s in ("sysfs" if dev else None, source if td else None) if s))
        notes = list(td.notes if td else ())
        if note:
            notes.append(note)
        if dev is not None and td is None:
            notes.append("index by PCI order")
        if dev is not None and dev.driver:
            notes.append(f"kernel driver {dev.driver}")
        if key == "intel" and dev is not None and dev.bus_id.endswith(":00:02.0"):
            notes.append("integrated GPU: shares system RAM")
        index = td.index if td and td.index is not None else (
            sorted(pci_devs, key=lambda d: d.bus_id).index(dev) if dev else position)
        out.append(Accelerator(
            vendor=vendor.name, vendor_key=key,
            model=(td.model if td and td.model else None) or (_pci_name(dev) if dev else None),
            index=index, pci_bus_id=dev.bus_id if dev else td.bus_id,
            pci_vendor_id=f"0x{dev.vendor_id:04x}" if dev else f"0x{VENDOR_ID_BY_KEY[key]:04x}",
            pci_device_id=f"0x{dev.device_id:04x}" if dev else None,
            memory_total_bytes=td.memory_total_bytes if td else None,
            memory_free_bytes=td.memory_free_bytes if td else None,
            driver_version=td.driver_version if td else None,
            runtime_version=td.runtime_version if td else None,
            numa_node=dev.numa_node if dev else None, detected_by=detected,
            ggml_backend=backend, backend_in_build=in_build, notes=tuple(notes),
        ))
    return sorted(out, key=lambda a: (a.index is None, a.index or 0, a.pci_bus_id or ""))


def _pci_name(dev: PciDevice) -> str:
    from aiboxctl.hardware.pciids import device_name

    return device_name(dev.vendor_id, dev.device_id) or f"{dev.vendor.name} device 0x{dev.device_id:04x}"


def _run_selftest(cpu: CpuInfo, engine: EngineBuild, warnings: list[str]) -> tuple[CpuInfo, SelfTestSummary | None]:
    """Fill ``IsaPath.verified`` from the engine's self-test (contract 5)."""
    from aiboxctl.hardware import selftest_bridge

    try:
        result = selftest_bridge.run_engine_selftest()
    except selftest_bridge.NoTestModel as exc:
        warnings.append(f"probe --selftest: {exc}")
        return cpu, None
    except selftest_bridge.SelfTestNotRun as exc:  # the self-test failing to start is itself a finding
        warnings.append(f"probe --selftest could not run: {exc}")
        return cpu, None
    summary = selftest_bridge.summarize(result)
    if summary.fallback:
        warnings.append(f"self-test: the engine needs fallback '{summary.fallback}' on this box ({summary.reason})")
    elif not summary.ok:
        warnings.append(f"self-test failed: {summary.reason}")
    verdicts = selftest_bridge.isa_verdicts(result, cpu, engine)
    paths = tuple(replace(p, verified=verdicts[p.name][0], detail=verdicts[p.name][1]) if p.name in verdicts else p
                  for p in cpu.isa_paths)
    return replace(cpu, isa_paths=paths), summary


def decide_serving(accelerators: list[Accelerator], engine: EngineBuild, cpu_variant: str) -> ServingDecision:
    usable = [a for a in accelerators if a.ggml_backend and a.backend_in_build]
    if usable:
        backend = usable[0].ggml_backend
        chosen = [a for a in usable if a.ggml_backend == backend]
        unused = [a for a in accelerators if a not in chosen]
        reason = f"{backend} on {_describe(chosen)}"
        if unused:
            reason += f"; not used: {_why_not(unused, engine)}"
        return ServingDecision(backend, tuple(a.index for a in chosen if a.index is not None), reason)
    cpu = f"CPU (ggml variant {cpu_variant})"
    if not accelerators:
        return ServingDecision("CPU", (), f"{cpu}: no accelerator found")
    return ServingDecision("CPU", (), f"{cpu}, because {_why_not(accelerators, engine)}")


def _describe(accs: list[Accelerator]) -> str:
    groups: dict[str, int] = {}
    for a in accs:
        named = a.model and a.model.split()[0].lower() in a.vendor.lower().split()  # "Ascend 910A", "NVIDIA H100"
        label = (a.model if named else f"{a.vendor} {a.model}") if a.model else a.vendor
        groups[label] = groups.get(label, 0) + 1
    return ", ".join(f"{n}× {label}" for label, n in groups.items())


def _why_not(accs: list[Accelerator], engine: EngineBuild) -> str:
    reasons = []
    for key in dict.fromkeys(a.vendor_key for a in accs):
        group = [a for a in accs if a.vendor_key == key]
        fit = backends.FITS.get(key)
        if fit is None or fit.backend is None:
            why = (fit.build_hint if fit else "no ggml backend is known for it")
        elif not engine.available:
            why = "the llama-cpp-python build could not be read"
        else:
            have = "/".join(engine.backends) or "no backends"
            why = f"the installed llama-cpp-python has {have}, not {fit.backend}: {fit.build_hint}"
        reasons.append(f"{_describe(group)} — {why}")
    return "; ".join(reasons)
