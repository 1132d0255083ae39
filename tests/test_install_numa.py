"""NUMA pinning (issue 14): on a box with several NUMA nodes each engine instance is pinned to the
node its devices hang off. A two-socket probe (a fake sysfs at the true system edge) → the plan
pins each replica to its devices' node with a disjoint share of that node's CPUs and threads to
match; install renders the pin (systemd drop-in CPUAffinity=/NUMAPolicy=/NUMAMask=, verified by
systemd-analyze; the line the supervisor reads); the built-in supervisor really applies it (the
real child's Cpus_allowed_list on this machine)."""

from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path

import pytest

from aiboxctl.deploy.instances import PlannedInstance, instance_entries, new_internal_keys
from aiboxctl.deploy.spec import render_appliance
from aiboxctl.engine_settings import EngineSettings
from aiboxctl.hardware.cpu import parse_cpulist, read_cpu
from aiboxctl.sizing.planner import plan
from aiboxctl.sizing.profiles import load_use_case
from test_render import make_spec, verify_unit, write_all

needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                           reason="systemd-analyze not installed (CI installs it)")


def two_socket_cpu(tmp_path: Path):
    """A 2-socket box, 8 cores x 2 threads each, as /proc/cpuinfo and sysfs show it (Linux numbers
    the SMT siblings of CPUs 0-15 as 16-31)."""
    proc, sysfs = tmp_path / "proc", tmp_path / "sys"
    proc.mkdir()
    blocks = []
    for cpu in range(32):
        socket, core = (cpu % 16) // 8, cpu % 8
        blocks.append(f"processor\t: {cpu}\nvendor_id\t: GenuineIntel\nmodel name\t: Xeon Gold 6430\n"
                      f"physical id\t: {socket}\ncore id\t\t: {core}\nflags\t\t: sse2 avx2 avx512f\n")
    (proc / "cpuinfo").write_text("\n".join(blocks))
    for node, cpus in ((0, "0-7,16-23"), (1, "8-15,24-31")):
        d = sysfs / "devices/system/node" / f"node{node}"
        d.mkdir(parents=True)
        (d / "cpulist").write_text(cpus + "\n")
    return read_cpu(proc, sysfs, [])


def _report(cpu, numa_of_gpu: list[int]):
    from aiboxctl.hardware.model import (Accelerator, Bandwidth, EngineBuild, HardwareReport, MemoryInfo,
                                         ServingDecision)

    ram = 512 * 2**30
    mem = MemoryInfo(ram, ram, None, None, None, Bandwidth(400.0, "dmidecode", "16 x DDR5-4800"))
    engine = EngineBuild(True, "0.3.36", ("CPU", "CUDA"), (), (), (), None, (), True, "", "live", None)
    gpus = tuple(Accelerator(vendor="nvidia", vendor_key="nvidia", model="NVIDIA H100 80GB HBM3", index=i,
                             pci_bus_id=None, pci_vendor_id=None, pci_device_id=None, memory_total_bytes=80 * 2**30,
                             memory_free_bytes=80 * 2**30, driver_version=None, runtime_version=None, numa_node=n,
                             detected_by=("sysfs",), ggml_backend="CUDA", backend_in_build=True)
                 for i, n in enumerate(numa_of_gpu))
    return HardwareReport(cpu, mem, (), gpus, engine, ServingDecision("CUDA", tuple(range(len(gpus))), "test"))


def test_the_probe_reads_each_numa_node_s_cpus(tmp_path):
    cpu = two_socket_cpu(tmp_path)
    assert (cpu.sockets, cpu.cores, cpu.threads, cpu.numa_nodes) == (2, 16, 32, 2)
    assert cpu.numa_cpus == ("0-7,16-23", "8-15,24-31")


def test_a_two_socket_probe_pins_each_replica_to_its_devices_node(tmp_path):
    report = _report(two_socket_cpu(tmp_path), [0, 0, 1, 1])
    p = plan(load_use_case("gov-office"), report, exact=False)
    chat = p.instances[0]
    assert chat.replicas == 4 and len(chat.cpu_pins) == 4
    nodes = {0: set(parse_cpulist("0-7,16-23")), 1: set(parse_cpulist("8-15,24-31"))}
    seen: set[int] = set()
    for group, pin in zip(chat.device_groups, chat.cpu_pins):
        assert pin is not None and pin.node == {"CUDA0": 0, "CUDA1": 0, "CUDA2": 1, "CUDA3": 1}[group[0]]
        assert set(pin.cpus) <= nodes[pin.node] and not seen & set(pin.cpus)  # its node, disjoint shares
        seen |= set(pin.cpus)
        assert len(pin.cpus) == 8
    # two replicas share a node: each gets 8 of its 16 logical CPUs, 4 cores
    assert chat.engine.threads == chat.engine.threads_batch == 4
    assert chat.to_dict()["cpu_pins"][2] == {"numa_node": 1, "cpus": "8,10,12,14,24,26,28,30"}
    assert any("pinned to their devices' NUMA node" in n for n in p.notes)


def test_a_one_node_box_pins_nothing(tmp_path):
    cpu = dataclasses.replace(two_socket_cpu(tmp_path), numa_cpus=("0-31",), numa_nodes=1)
    p = plan(load_use_case("gov-office"), _report(cpu, [0, 0, 0, 0]), exact=False)
    assert p.instances[0].cpu_pins == ()


def pinned_spec(root: Path, cpus: str = "0-3"):
    spec = make_spec(root, api_key=False, user="aibox")
    chat = EngineSettings(role="chat", n_gpu_layers=65, parallel=5, n_ctx=40960, threads=4, threads_batch=4)
    planned = [PlannedInstance("chat-0", "chat", "qwen-32b", "Q8_0", chat, {"CUDA_VISIBLE_DEVICES": "0"},
                               ("CUDA0",), None, {"numa_node": 1, "cpus": cpus}),
               PlannedInstance("chat-1", "chat", "qwen-32b", "Q8_0", chat, {"CUDA_VISIBLE_DEVICES": "1"},
                               ("CUDA1",), None)]
    paths = {"chat-0": "/opt/models/q.gguf", "chat-1": "/opt/models/q.gguf"}
    return dataclasses.replace(spec, instances=instance_entries(spec.layout, planned, paths, spec.engine.port))


def test_install_renders_the_pin_for_systemd_and_the_supervisor(tmp_path):
    spec = pinned_spec(tmp_path)
    write_all(render_appliance(spec, None, new_internal_keys()))
    units, etc = spec.layout.unit_dir, spec.layout.etc
    dropin = (units / "aibox-engine@chat-0.service.d/numa.conf").read_text().splitlines()
    assert dropin[1:] == ["[Service]", "CPUAffinity=0-3", "NUMAPolicy=bind", "NUMAMask=1"]
    assert not (units / "aibox-engine@chat-1.service.d").exists()
    assert "AIBOX_CPU_AFFINITY=0-3" in (etc / "engines/chat-0.env").read_text().splitlines()
    assert "AIBOX_CPU_AFFINITY" not in (etc / "engines/chat-1.env").read_text()


@needs_systemd_analyze
def test_the_pinned_unit_verifies(tmp_path):
    spec = pinned_spec(tmp_path)
    write_all(render_appliance(spec, None, "gateway:k\n"))
    units = spec.layout.unit_dir
    shutil.copy(units / "aibox-engine@.service", units / "aibox-engine@chat-0.service")
    assert verify_unit(tmp_path, units / "aibox-engine@chat-0.service") == ""
    # a misspelt setting in the drop-in is reported: the drop-in is read by the verify above
    bad = units / "aibox-engine@chat-0.service.d/numa.conf"
    bad.write_text(bad.read_text().replace("NUMAPolicy=bind", "NUMAPolicy=bogus"))
    assert "numa.conf:4: Invalid NUMA policy type" in verify_unit(tmp_path, units / "aibox-engine@chat-0.service")


def test_the_supervisor_pins_the_real_child(tmp_path):
    from aiboxctl.deploy.supervisor import _Several

    spec = pinned_spec(tmp_path, cpus="0")
    write_all(render_appliance(spec, None, new_internal_keys()))
    spec.layout.log.mkdir(parents=True, exist_ok=True)
    sup = _Several(spec.layout)
    kids = {c.name: c for c in sup.children_of()}
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    started = []
    try:
        for name in ("chat-0", "chat-1"):
            child = dataclasses.replace(kids[name], argv=sleeper)
            sup.start(child, {})
            started.append(child)
        status = {c.name: Path(f"/proc/{c.proc.pid}/status").read_text() for c in started}
        allowed = {n: next(line.split(":", 1)[1].strip() for line in s.splitlines()
                           if line.startswith("Cpus_allowed_list")) for n, s in status.items()}
        assert allowed["chat-0"] == "0"
        import os
        assert set(parse_cpulist(allowed["chat-1"])) == os.sched_getaffinity(0)  # unpinned: inherits ours
    finally:
        for c in started:
            c.proc.kill()
            c.proc.wait(10)
