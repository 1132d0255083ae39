"""Which of llama.cpp's CPU "extra buffer types" take a weight, and what the copy costs.

With ``use_extra_bufts`` (our ``repack``, llama-server's ``--repack``) llama.cpp offers every
host weight to the CPU backend's extra buffer types before the plain CPU buffer, in this order
(ggml-cpu.cpp ``ggml_backend_cpu_get_extra_buffer_types``; llama-model-loader.cpp
``select_weight_buft`` takes the first whose ``supports_op`` accepts the weight's op):

1. **AMX** — built when the compiler targets AMX-INT8 and AVX512-VNNI (a native build on a
   Sapphire/Emerald/Granite Rapids Xeon, or the portable build's ``sapphirerapids`` variant) and
   the kernel grants the tile state. Takes 2-D ``MUL_MAT`` weights (not MoE experts) whose row
   count is a multiple of 32, of type Q4_0/Q4_1/Q8_0 (row length a multiple of 32),
   Q4_K/Q5_K/Q6_K/IQ4_XS (multiple of 256) or F16 (multiple of 16) — ggml-cpu/amx/amx.cpp
   ``supports_op``. Its copy is bigger than the original for Q8_0 (+4 bytes per 34-byte
   block), Q4_K/Q5_K (+4 per block) and IQ4_XS (+2): ``amx/mmq.cpp get_row_size``.
2. **CPU_REPACK** — ggml-cpu/repack.cpp ``ggml_repack_get_optimal_repack_type``: on x86 Q4_0,
   Q4_K, IQ4_NL and MXFP4 with AVX2 and Q2_K with AVX-512, on Arm Q4_0/Q4_K/Q5_K/Q6_K/Q8_0/
   IQ4_NL/MXFP4 with dot-product or i8mm; rows a multiple of 8 (Arm: 4 for the 32-blocks).
   2-D ``MUL_MAT`` and 3-D ``MUL_MAT_ID`` (MoE experts). Same size as the original.

Measured on this workplace's Xeon (AMX) with gemma-3-270m Q4_K_M: the AMX buffer is 213.91 MiB
(its tied output matrix, Q8_0 262144 x 640, alone is 190 MiB) where an AVX2 EPYC's CPU_REPACK
holds 12.66 MiB. What the copy costs depends on mmap (docs/sizing.md): with mmap the originals
were read through the mapping and stay resident, so the copy adds to them; without mmap the copy
replaces the original in the CPU buffer, except the tied output matrix, a second tensor that
exists only because its buffer type differs from the input embedding's.

KleidiAI (Arm, off in default builds) and the RISC-V SpacemiT buffer are not modelled.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from aiboxctl.models.facts import BLOCK, WeightMatrix

# AMX: row-length alignment per type, and extra bytes per block in the packed copy.
_AMX_ALIGN = {"Q4_0": 32, "Q4_1": 32, "Q8_0": 32, "Q4_K": 256, "Q5_K": 256, "Q6_K": 256, "IQ4_XS": 256,
              "F16": 16}
_AMX_EXTRA = {"Q8_0": 4, "Q4_K": 4, "Q5_K": 4, "IQ4_XS": 2}

# CPU_REPACK: type -> (the ISA features that enable it, row-count multiple), first match wins.
_REPACK_X86 = {"Q4_0": (("avx2", 8),), "Q4_K": (("avx2", 8),), "IQ4_NL": (("avx2", 8),),
               "MXFP4": (("avx2", 8),), "Q2_K": (("avx512f", 8),)}
_REPACK_ARM = {"Q4_0": (("i8mm", 4), ("asimddp", 4)), "Q4_K": (("i8mm", 8), ("asimddp", 8)),
               "Q5_K": (("i8mm", 8), ("asimddp", 8)), "Q6_K": (("i8mm", 8), ("asimddp", 8)),
               "Q8_0": (("i8mm", 4), ("asimddp", 4)), "Q1_0": (("i8mm", 4), ("asimddp", 4)),
               "IQ4_NL": (("asimddp", 4),), "MXFP4": (("asimddp", 4),)}

AMX = "AMX"
CPU_REPACK = "CPU_REPACK"


@dataclass(frozen=True)
class CpuBuffers:
    """The extra buffer types llama.cpp's CPU backend offers on one CPU, in llama.cpp's order."""

    arch: str = "x86_64"
    amx: bool = False
    isa: frozenset[str] = frozenset()  # the /proc/cpuinfo flags the CPU_REPACK rules read

    @classmethod
    def from_flags(cls, flags: Iterable[str], arch: str | None = None) -> CpuBuffers:
        """From /proc/cpuinfo-style flags (a probe's ``cpu.flags`` or a hardware profile's)."""
        f = frozenset(flags)
        if arch is None:
            arch = "aarch64" if "asimd" in f else "x86_64"
        arm = arch in ("aarch64", "arm64")
        amx = not arm and {"amx_tile", "amx_int8", "avx512_vnni"} <= f
        keep = ("i8mm", "asimddp") if arm else ("avx2", "avx512f")
        return cls("aarch64" if arm else arch, amx, frozenset(x for x in keep if x in f))

    @property
    def names(self) -> tuple[str, ...]:
        """The extra buffer types present, in the order llama.cpp tries them."""
        return ((AMX,) if self.amx else ()) + ((CPU_REPACK,) if self._repack_rules() and self.isa else ())

    def _repack_rules(self) -> dict:
        if self.arch in ("aarch64", "arm64"):
            return _REPACK_ARM
        return _REPACK_X86 if self.arch.startswith(("x86", "amd64", "i686")) else {}

    def buffer_for(self, w: WeightMatrix) -> tuple[str, int] | None:
        """(buffer type, bytes it allocates) for a weight, or None: it stays in the CPU buffer."""
        if self.amx and w.op == "mul_mat" and len(w.shape) == 2:
            align = _AMX_ALIGN.get(w.type_name)
            ne0, ne1 = w.shape
            if align and ne0 % align == 0 and ne1 % 32 == 0:
                block = BLOCK[w.type_name][0]
                return AMX, w.n_bytes + ne1 * (ne0 // block) * _AMX_EXTRA.get(w.type_name, 0)
        want_dims = 2 if w.op == "mul_mat" else 3
        if len(w.shape) == want_dims:
            for feature, multiple in self._repack_rules().get(w.type_name, ()):
                if feature in self.isa and w.shape[1] % multiple == 0:
                    return CPU_REPACK, w.n_bytes
        return None

    def in_build(self, system_info: str) -> CpuBuffers:
        """Narrowed to what an installed engine was built with (``llama_print_system_info``:
        "AMX_INT8 = 1", "REPACK = 1"); unchanged when the build says nothing about its CPU."""
        from dataclasses import replace

        if "CPU :" not in system_info:
            return self
        return replace(self, amx=self.amx and "AMX_INT8 = 1" in system_info,
                       isa=self.isa if "REPACK = 1" in system_info else frozenset())

    def describe(self) -> str:
        return ", ".join(self.names) or "none"


NO_EXTRA_BUFFERS = CpuBuffers(arch="none")


def this_cpu() -> CpuBuffers:
    """The extra buffer types of the CPU this process runs on (its /proc/cpuinfo flags)."""
    from pathlib import Path

    from aiboxctl.hardware.cpu import read_cpu

    cpu = read_cpu(Path("/proc"), Path("/sys"), [])
    return CpuBuffers.from_flags(cpu.flags, cpu.arch)
