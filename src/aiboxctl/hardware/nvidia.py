"""NVIDIA: NVML through nvidia-ml-py (``import pynvml``), falling back to nvidia-smi's CSV."""

from __future__ import annotations

from aiboxctl.hardware.pci import PciDevice, normalize_bus_id
from aiboxctl.hardware.tools import ParseError, ToolDevice, ToolReport, find_tool, mib, run_and_parse

QUERY = "index,name,pci.bus_id,driver_version,memory.total,memory.free,compute_cap"


def _s(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_nvml() -> tuple[ToolDevice, ...]:
    """All GPUs NVML sees. Raises whatever pynvml raises (the caller turns it into a warning)."""
    import pynvml

    pynvml.nvmlInit()
    try:
        driver = _s(pynvml.nvmlSystemGetDriverVersion())
        try:
            cuda = pynvml.nvmlSystemGetCudaDriverVersion()
            cuda_version = f"CUDA {cuda // 1000}.{cuda % 1000 // 10}"
        except pynvml.NVMLError:
            cuda_version = None
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            try:  # v2 works on unified-memory parts (GB10) where v1 is NOT_SUPPORTED
                mem = pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
            except (pynvml.NVMLError, TypeError, AttributeError):
                mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            notes = []
            try:
                major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(h)
                notes.append(f"compute capability {major}.{minor}")
            except pynvml.NVMLError:
                pass
            out.append(ToolDevice(
                index=i, model=_s(pynvml.nvmlDeviceGetName(h)),
                bus_id=normalize_bus_id(_s(pynvml.nvmlDeviceGetPciInfo(h).busId)),
                memory_total_bytes=int(mem.total), memory_free_bytes=int(mem.free),
                driver_version=driver, runtime_version=cuda_version, notes=tuple(notes),
            ))
        return tuple(out)
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001 - shutting down a half-initialised NVML must not matter
            pass


def parse_nvidia_smi_csv(text: str) -> tuple[ToolDevice, ...]:
    """``nvidia-smi --query-gpu=QUERY --format=csv,noheader,nounits`` (also ixsmi's CSV)."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < 6 or not cells[0].isdigit():
            raise ParseError(f"unexpected CSV row with {len(cells)} fields")
        index, name, bus, driver, total, free = cells[:6]
        cap = cells[6] if len(cells) > 6 and cells[6] not in ("", "[N/A]", "N/A") else None
        out.append(ToolDevice(
            index=int(index), model=name, bus_id=normalize_bus_id(bus),
            memory_total_bytes=mib(total), memory_free_bytes=mib(free),
            driver_version=driver if driver not in ("[N/A]", "N/A") else None,
            notes=(f"compute capability {cap}",) if cap else (),
        ))
    if not out:
        raise ParseError("no GPU rows")
    return tuple(out)


def query(devices: list[PciDevice], timeout: float) -> ToolReport:
    warnings = []
    try:
        return ToolReport("nvml", read_nvml())
    except Exception as exc:  # noqa: BLE001 - NVML failing in any way falls back to nvidia-smi
        nvml_reason = f"NVML: {type(exc).__name__}: {exc}".rstrip(": ")
    tool = find_tool("nvidia-smi")
    if tool is None:
        warnings.append(f"{nvml_reason}; nvidia-smi not found")
        return ToolReport("", (), tuple(warnings))
    found, reason = run_and_parse(
        "nvidia-smi", [tool, f"--query-gpu={QUERY}", "--format=csv,noheader,nounits"], parse_nvidia_smi_csv,
        timeout)
    if found is None:
        return ToolReport("", (), (f"{nvml_reason}; {reason}",))
    return ToolReport("nvidia-smi", found, (f"{nvml_reason}; used nvidia-smi instead",))
