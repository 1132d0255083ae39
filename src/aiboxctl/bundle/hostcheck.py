"""Is this box the machine a bundle was made for? What differs from its hardware profile.

``pack`` plans for a hardware profile (a box it may never see); ``install --bundle`` runs on
whatever box it is given. The install re-plans and re-checks memory on the box itself, so a
different box is not refused, but the person installing is told what differs (accelerators,
CPU, memory), because the bundled engine build and model were chosen for the profile's box.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

_GIB = 1 << 30
_MEMORY_TOLERANCE = 0.10  # DIMM and firmware reservations: within 10 % is the same box


def _profile_accelerators(profile: Any) -> Counter:
    return Counter({(a.model, a.backend): a.count for a in profile.accelerators})


def _box_accelerators(box: Any) -> Counter:
    return Counter((a.model or a.vendor, a.ggml_backend or "none") for a in box.accelerators)


def _describe(accs: Counter) -> str:
    if not accs:
        return "none"
    return ", ".join(f"{n} x {model} ({backend})" for (model, backend), n in sorted(accs.items()))


def hardware_differences(profile: Any, box: Any) -> list[str]:
    """One line per fact of ``profile`` (a :class:`HardwareProfile`) that ``box`` (a probe
    :class:`HardwareReport`) does not match; empty when it is the same kind of machine."""
    name = profile.name
    diffs: list[str] = []
    want, have = _profile_accelerators(profile), _box_accelerators(box)
    want_backends = Counter({b: n for (_, b), n in want.items()})
    have_backends = Counter({b: n for (_, b), n in have.items()})
    if want_backends != have_backends:
        diffs.append(f"accelerators: the bundle was made for {name} with {_describe(want)}; this box has "
                     f"{_describe(have)} (the bundled engine build and model were chosen for the former)")
    box_arch = getattr(box.cpu, "arch", None)
    if box_arch and box_arch != profile.cpu.arch:
        diffs.append(f"CPU architecture: {name} is {profile.cpu.arch}, this box is {box_arch}")
    if box.cpu.cores and box.cpu.cores != profile.cpu.cores:
        diffs.append(f"CPU: {name} has {profile.cpu.cores} cores ({profile.cpu.model}), this box "
                     f"{box.cpu.cores} ({box.cpu.model}); the planned speed assumes the former")
    total = box.memory.total_bytes
    if total and abs(total - profile.memory.total) > _MEMORY_TOLERANCE * profile.memory.total:
        diffs.append(f"memory: {name} has {profile.memory.total / _GIB:.0f} GiB, this box {total / _GIB:.0f} GiB"
                     + ("; the install re-plans for what fits here" if total < profile.memory.total else ""))
    return diffs


def bundle_hardware_warnings(hardware_name: str | None, box: Any) -> list[str]:
    """The warnings ``install --bundle`` gives for a bundle made for ``hardware_name``."""
    from aiboxctl.errors import AiboxError
    from aiboxctl.sizing.hardware_profiles import load_hardware_profile

    if not hardware_name:
        return ["the bundle does not say which hardware it was made for: nothing to compare this box with"]
    try:
        profile = load_hardware_profile(hardware_name)
    except (AiboxError, OSError) as exc:
        return [f"the bundle was made for hardware profile {hardware_name}, which this aiboxctl cannot load "
                f"({getattr(exc, 'message', exc)}): this box was not compared with it"]
    return [f"this box is not the hardware the bundle was made for: {d}"
            for d in hardware_differences(profile, box)]
