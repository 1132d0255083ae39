"""Pure parts of the probe: CPU variant mapping, vendor output parsers, dmidecode, meminfo."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from aiboxctl.hardware import amd, ascend, cambricon, enflame, iluvatar, kunlunxin, metax, mthreads, nvidia
from aiboxctl.hardware.cpu import ggml_cpu_variant, read_cpu
from aiboxctl.hardware.memory import parse_dmidecode_memory, parse_meminfo
from aiboxctl.hardware.pci import normalize_bus_id
from aiboxctl.hardware.tools import ParseError

F = Path(__file__).parent / "fixtures" / "accelerators"
MIB = 2**20
BASE = "sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma bmi2 avx2"
AVX512 = "avx512f avx512cd avx512vl avx512dq avx512bw"


def text(name: str) -> str:
    return (F / name).read_text()


@pytest.mark.parametrize("flags, variant", [
    ("sse sse2", "x64"),
    ("sse sse2 sse4_2", "sse42"),
    ("sse sse2 sse4_2 avx", "sandybridge"),
    ("sse sse2 sse4_2 avx f16c", "ivybridge"),
    ("sse sse2 sse4_2 avx f16c fma", "piledriver"),
    (BASE, "haswell"),
    (f"{BASE} avx_vnni", "alderlake"),
    (f"{BASE} {AVX512}", "skylakex"),
    (f"{BASE} avx512f avx512bw", "haswell"),  # ggml also needs CD, VL and DQ for its AVX-512 builds
    (f"{BASE} {AVX512} avx512_vnni", "cascadelake"),
    (f"{BASE} {AVX512} avx512vbmi", "cannonlake"),
    (f"{BASE} {AVX512} avx512vbmi avx512_vnni", "icelake"),
    (f"{BASE} {AVX512} avx512_vnni avx512_bf16", "cooperlake"),
    (f"{BASE} {AVX512} avx512vbmi avx512_vnni avx512_bf16 avx_vnni", "zen4"),
    (f"{BASE} {AVX512} avx512vbmi avx512_vnni avx512_bf16 avx_vnni amx_tile amx_int8", "sapphirerapids"),
    (f"{BASE} {AVX512} avx512vbmi avx512_vnni avx512_bf16 amx_int8", "zen4"),  # AMX needs the tile flag too
])
def test_x86_flags_map_to_the_ggml_variant(flags, variant):
    assert ggml_cpu_variant(set(flags.split()), "x86_64") == variant


@pytest.mark.parametrize("flags, variant", [
    ("fp asimd", "armv8.0_1"),
    ("fp asimd asimddp", "armv8.2_1"),
    ("fp asimd asimddp fphp asimdhp", "armv8.2_2"),
    ("fp asimd asimddp asimdhp sve", "armv8.2_3"),
    ("fp asimd asimddp asimdhp sve i8mm", "armv8.6_1"),
    ("fp asimd asimddp asimdhp sve i8mm sve2", "armv8.6_2"),
    ("fp asimd asimddp asimdhp sve i8mm sve2 sme", "armv9.2_2"),
])
def test_arm_features_map_to_the_ggml_variant(flags, variant):
    assert ggml_cpu_variant(set(flags.split()), "aarch64") == variant


def test_cpu_from_proc_marks_amx_and_avx512_advertised_not_verified(tmp_path):
    (tmp_path / "cpuinfo").write_text(text("cpuinfo-sapphirerapids.txt"))
    warnings: list[str] = []
    cpu = read_cpu(tmp_path, tmp_path / "nosys", warnings)
    assert cpu.model == "Intel(R) Xeon(R) Platinum 8480+" and cpu.vendor == "GenuineIntel"
    assert (cpu.sockets, cpu.cores, cpu.threads) == (1, 2, 2)
    assert cpu.ggml_variant == "sapphirerapids"
    assert {"amx_tile", "amx_int8", "avx512f", "avx_vnni"} <= set(cpu.flags) and "fpu" not in cpu.flags
    paths = {p.name: p for p in cpu.isa_paths}
    assert paths["amx"].advertised and paths["avx512"].advertised
    assert paths["amx"].verified == "not run" and paths["avx512"].verified == "not run"


def test_arm_cpu_topology_comes_from_sysfs(tmp_path):
    (tmp_path / "cpuinfo").write_text(text("cpuinfo-kunpeng920.txt"))
    sysfs = tmp_path / "sys"
    for i in range(2):
        topo = sysfs / "devices" / "system" / "cpu" / f"cpu{i}" / "topology"
        topo.mkdir(parents=True)
        (topo / "physical_package_id").write_text("0\n")
        (topo / "core_id").write_text(f"{i}\n")
    cpu = read_cpu(tmp_path, sysfs, [])
    assert cpu.arch == "aarch64" and cpu.vendor == "HiSilicon"
    assert cpu.ggml_variant == "armv8.2_2"
    assert (cpu.sockets, cpu.cores, cpu.threads) == (1, 2, 2)
    assert cpu.isa_paths == ()
    assert "asimddp" in cpu.flags


def test_bus_ids_are_normalized():
    assert normalize_bus_id("00000000:4F:00.0") == "0000:4f:00.0"
    assert normalize_bus_id("00:3d:00.0") == "0000:3d:00.0"
    assert normalize_bus_id("0000:DA:00.0") == "0000:da:00.0"
    assert normalize_bus_id("N/A") is None


def test_npu_smi_910_table_uses_hbm_and_mapping_names():
    rows = ascend.parse_npu_smi_info(text("npu-smi-info-910a.txt"))
    assert len(rows) == 8  # the process table after the devices is not read as devices
    assert rows[0].bus_id == "0000:c1:00.0" and rows[0].total_mib == 32768 and rows[0].used_mib == 0
    assert rows[0].version == "24.1.RC2" and rows[0].name is None  # "xxx" in the sample
    mapping = ascend.parse_npu_smi_mapping(text("npu-smi-map-910a.txt"))
    assert [m.logic_id for m in mapping] == list(range(8)) and mapping[0].name == "Ascend 910A"


def test_npu_smi_310_table_and_mapping_skip_the_mcu():
    rows = ascend.parse_npu_smi_info(text("npu-smi-info-310.txt"))
    assert [(r.npu_id, r.chip_id) for r in rows] == [(6, 0), (6, 1), (6, 2), (6, 3)]
    assert rows[1].used_mib == 2867 and rows[1].total_mib == 8192 and rows[1].name == "310"
    mapping = ascend.parse_npu_smi_mapping(text("npu-smi-map-310.txt"))
    assert len(mapping) == 4 and all(m.name == "MiniD" for m in mapping)


def test_npu_smi_950_layout():
    rows = ascend.parse_npu_smi_info(text("npu-smi-info-950.txt"))
    assert rows[0].name == "Ascend950PR" and rows[0].total_mib == 131072 and rows[0].used_mib == 5225
    assert rows[1].total_mib is None  # 0 / 0: ask -t usages
    mapping = ascend.parse_npu_smi_mapping(text("npu-smi-map-950.txt"))
    assert [(m.npu_id, m.logic_id) for m in mapping] == [(0, 0), (1, 1)]


def test_npu_smi_usages_hbm_and_ddr():
    assert ascend.parse_npu_smi_usages(text("npu-smi-usages-950.txt")) == (131072, 5242)
    assert ascend.parse_npu_smi_usages(text("npu-smi-usages-310p.txt")) == (44280, 1328)
    with pytest.raises(ParseError):
        ascend.parse_npu_smi_usages("Aicore Usage Rate(%) : 3\n")


def test_rocm_smi_json_amd_bytes_and_hygon_mib():
    (gpu,) = amd.parse_rocm_smi_json(text("rocm-smi-amd.json"))
    assert gpu.model.startswith("Navi 32") and gpu.memory_total_bytes == 17163091968
    assert gpu.memory_free_bytes == 17163091968 - 11615076352
    (dcu,) = amd.parse_rocm_smi_json(text("rocm-smi-dtk.json"))
    assert dcu.memory_total_bytes == 65520 * MIB and dcu.memory_free_bytes == (65520 - 2) * MIB
    cards = amd.parse_rocm_smi_json(text("hy-smi.json"))
    assert [c.model for c in cards] == ["K100_AI", "K100_AI"]


def test_amd_smi_static_text():
    (gpu,) = amd.parse_amd_smi_static(text("amd-smi-static.txt"))
    assert gpu.model == "AMD Instinct MI350X" and gpu.bus_id == "0000:05:00.0"
    assert gpu.driver_version == "6.18.3" and gpu.memory_total_bytes == 294896 * MIB


@pytest.mark.parametrize("parse, name, first", [
    (metax.parse_mx_smi, "mx-smi.txt", ("MetaX C500", "0000:0e:00.0", 65536, 65536 - 826, "2.12.13")),
    (mthreads.parse_mthreads_gmi, "mthreads-gmi.txt", ("MTT S5000", "0000:2a:00.0", 81920, 81920 - 66641,
                                                       "3.3.5-server")),
    (iluvatar.parse_ixsmi, "ixsmi.txt", ("Iluvatar BI-V100", "0000:98:00.0", 32768, 32768 - 257, "3.1.0")),
    (cambricon.parse_cnmon, "cnmon.txt", ("MLU370-S4", "0000:65:00.0", 23308, 23308, "5.10.22")),
    (kunlunxin.parse_xpu_smi_machine, "xpu-smi-m.txt", ("P800 OAM", "0000:3b:00.0", 98304, 98304 - 1024, None)),
    (enflame.parse_efsmi, "efsmi.txt", ("Enflame S60", "0000:3d:00.0", 49120, 49120, "1.4.4.501")),
    (nvidia.parse_nvidia_smi_csv, "nvidia-smi.csv", ("NVIDIA H100 80GB HBM3", "0000:1b:00.0", 81559, 81004,
                                                     "550.54.15")),
])
def test_vendor_table_parsers(parse, name, first):
    devices = parse(text(name))
    d = devices[0]
    assert (d.model, d.bus_id, d.memory_total_bytes // MIB, d.memory_free_bytes // MIB, d.driver_version) == first
    assert d.index == 0


def test_metax_runtime_is_maca_and_not_the_tool_version():
    d = metax.parse_mx_smi(text("mx-smi.txt"))[0]
    assert d.runtime_version == "MACA 2.29.0.19" and d.driver_version != "2.1.12"


@pytest.mark.parametrize("parse", [metax.parse_mx_smi, mthreads.parse_mthreads_gmi, iluvatar.parse_ixsmi,
                                   cambricon.parse_cnmon, kunlunxin.parse_xpu_smi_machine, enflame.parse_efsmi,
                                   nvidia.parse_nvidia_smi_csv, ascend.parse_npu_smi_info,
                                   ascend.parse_npu_smi_mapping, amd.parse_rocm_smi_json, amd.parse_amd_smi_static])
def test_garbage_is_a_parse_error(parse):
    with pytest.raises(ParseError):
        parse("Segmentation fault\n\x00\x01 garbage | garbage\n")


def test_name_collisions_are_refused():
    with pytest.raises(ParseError, match="Intel"):
        kunlunxin.parse_xpu_smi_machine(text("xpu-smi-intel.txt"))
    with pytest.raises(ParseError, match="MOFFETT"):
        metax.parse_mx_smi("MOFFETT-SMI 2.3.0  Driver Version 1.0  SOLA Version 1.2\n")


def test_dmidecode_counts_channels_not_dimms():
    gbps, detail = parse_dmidecode_memory(text("dmidecode-t17.txt"))
    # 4200 MT/s (configured, not the rated 5600) × 8 bytes × 2 populated channels (A has two DIMMs)
    assert gbps == pytest.approx(67.2)
    assert "2 channels" in detail and "4200" in detail
    assert parse_dmidecode_memory("Memory Device\n\tSize: No Module Installed\n")[0] is None


def test_meminfo():
    info = parse_meminfo(text("meminfo.txt"))
    assert info["MemTotal"] == 263867392 * 1024 and info["HugePages_Total"] == 16
    assert info["Hugepagesize"] == 2 * MIB


PARSERS = [
    (metax.parse_mx_smi, "mx-smi.txt"), (mthreads.parse_mthreads_gmi, "mthreads-gmi.txt"),
    (iluvatar.parse_ixsmi, "ixsmi.txt"), (cambricon.parse_cnmon, "cnmon.txt"),
    (kunlunxin.parse_xpu_smi_machine, "xpu-smi-m.txt"), (enflame.parse_efsmi, "efsmi.txt"),
    (nvidia.parse_nvidia_smi_csv, "nvidia-smi.csv"), (amd.parse_rocm_smi_json, "rocm-smi-amd.json"),
    (amd.parse_rocm_smi_json, "hy-smi.json"), (amd.parse_amd_smi_static, "amd-smi-static.txt"),
]


@pytest.mark.parametrize("parse, name", PARSERS, ids=[n for _, n in PARSERS])
def test_cut_off_output_is_refused_or_sane(parse, name):
    """A tool killed mid-print: every prefix of a real output either parses to sane devices
    or is refused with ParseError — never another exception, never negative or inverted memory."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    full = text(name)

    @settings(max_examples=60, deadline=None)
    @given(st.integers(min_value=0, max_value=len(full)), st.sampled_from(["", "\x00", "garbage", "|", "\n"]))
    def check(cut, tail):
        try:
            devices = parse(full[:cut] + tail)
        except ParseError:
            return
        for d in devices:
            assert d.memory_total_bytes is None or d.memory_total_bytes > 0
            if d.memory_free_bytes is not None:
                assert 0 <= d.memory_free_bytes <= d.memory_total_bytes

    check()


def _same_or_unknown_memory(part: Any, full: Any) -> bool:
    """A row of cut-off output may lack what the cut removed (memory unknown, to be asked with
    ``-t usages``), but never carries a wrong value."""
    if part == full:
        return True
    if isinstance(part, ascend.ChipRow):
        return part == dataclasses.replace(full, used_mib=part.used_mib, total_mib=part.total_mib) and \
            part.total_mib is None and part.used_mib is None
    if isinstance(part, tuple) and len(part) == 2:  # -t usages: (total, used)
        return part[0] == full[0] and part[1] in (None, full[1])
    return False


@pytest.mark.parametrize("parse, name", [
    (ascend.parse_npu_smi_info, "npu-smi-info-910a.txt"), (ascend.parse_npu_smi_info, "npu-smi-info-950.txt"),
    (ascend.parse_npu_smi_info, "npu-smi-info-310.txt"), (ascend.parse_npu_smi_mapping, "npu-smi-map-310.txt"),
    (ascend.parse_npu_smi_mapping, "npu-smi-map-950.txt"), (ascend.parse_npu_smi_usages, "npu-smi-usages-310p.txt"),
])
def test_cut_off_npu_smi_output_is_refused_or_sane(parse, name):
    """npu-smi killed mid-output (a timeout, a full pipe): the parser either refuses it or returns
    the leading devices exactly as the full output has them, never a number cut in half (a
    910 with "32" MiB of HBM, logic id 1 of 12)."""
    full_text = text(name)
    full = parse(full_text)
    for cut in range(len(full_text) + 1):
        try:
            part = parse(full_text[:cut])
        except ParseError:
            continue
        if parse is ascend.parse_npu_smi_usages:
            assert _same_or_unknown_memory(part, full), (cut, full_text[:cut][-60:], part)
            continue
        assert 0 < len(part) <= len(full), (cut, part)
        for got, want in zip(part, full):
            assert _same_or_unknown_memory(got, want), (cut, full_text[:cut][-60:], got, want)
