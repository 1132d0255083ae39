"""Step two of accelerator detection: what a vendor tool or library says about its devices.

Every vendor module exposes ``query(devices, timeout) -> ToolReport`` (never raising) and pure
``parse_*`` functions (text → ``ToolDevice``s, raising ``ParseError`` on output they do not
understand), so recorded outputs can be tested directly and a broken tool only costs a warning.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from aiboxctl.system import CommandResult, run_command, which

MIB = 1024 * 1024


class ParseError(ValueError):
    """The tool ran but printed something we do not understand."""


@dataclass(frozen=True)
class ToolDevice:
    index: int | None
    model: str | None = None
    bus_id: str | None = None  # normalized (pci.normalize_bus_id) or None when the tool omits it
    memory_total_bytes: int | None = None
    memory_free_bytes: int | None = None
    driver_version: str | None = None
    runtime_version: str | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ToolReport:
    source: str  # what answered: "nvml", "nvidia-smi", "npu-smi", ... or "" when nothing did
    devices: tuple[ToolDevice, ...] = ()
    warnings: tuple[str, ...] = field(default_factory=tuple)


def find_tool(name: str, default_dirs: Sequence[str] = ()) -> str | None:
    """PATH first (that is also how tests put fakes in), then the vendor's install dirs."""
    found = which(name)
    if found:
        return found
    for d in default_dirs:
        path = os.path.join(d, name)
        if os.access(path, os.X_OK):
            return path
    return None


def mib(value: str | float | int | None) -> int | None:
    if value is None:
        return None
    try:
        return int(float(value) * MIB)
    except (TypeError, ValueError):
        return None


def free_from(total: int | None, used: int | None) -> int | None:
    if total is None or used is None:
        return None
    return max(total - used, 0)


def run_and_parse(tool: str, argv: Sequence[str], parse: Callable[[str], tuple[ToolDevice, ...]],
                  timeout: float, *, env: dict | None = None) -> tuple[tuple[ToolDevice, ...] | None, str | None]:
    """Run ``argv`` (argv[0] is the resolved tool path) and parse stdout.

    Returns (devices, None) or (None, reason) — the reason is a sentence for ``warnings``."""
    result: CommandResult = run_command(argv, timeout=timeout, env=env)
    if not result.ok:
        reason = result.failure_reason()
        name = os.path.basename(argv[0])
        if reason.startswith(name):  # say which invocation failed ("npu-smi info -m exited 3")
            reason = tool + reason[len(name):]
        if result.timed_out:
            reason = f"{tool} did not answer within {timeout:g} s"
        return None, reason
    try:
        return parse(result.stdout), None
    except (ParseError, ValueError, KeyError, IndexError, TypeError) as exc:
        first = next((line.strip() for line in result.stdout.splitlines() if line.strip()), "")
        return None, f"{tool} printed output we cannot parse ({exc}): {first[:80]!r}"


def split_row(line: str) -> list[str]:
    """A table row "| a | b |" → ["a", "b"] (a missing closing bar is tolerated)."""
    body = line.strip()
    if body.startswith("|"):
        body = body[1:]
    if body.endswith("|"):
        body = body[:-1]
    return [cell.strip() for cell in body.split("|")]


USED_TOTAL = re.compile(r"(\d+)\s*(?:MiB|MB)?\s*/\s*(\d+)\s*(MiB|MB|GiB)?")
BUS_ID = re.compile(r"[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7]")


def parse_smi_table(text: str, *, driver: str | None, runtime: str | None) -> list[ToolDevice]:
    """The nvidia-smi-style table that several vendors' tools imitate (ixsmi, mx-smi): a device
    row ``| <index> <model> | <bus id> | ...`` followed by a row whose second cell holds
    ``<used>MiB / <total>MiB``. Returns [] when no device row is found."""
    from aiboxctl.hardware.pci import normalize_bus_id

    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("|")]
    out = []
    for i, line in enumerate(lines):
        cells = split_row(line)
        if len(cells) < 2 or not BUS_ID.fullmatch(cells[1]):
            continue
        tokens = cells[0].split()
        if not tokens or not tokens[0].isdigit():
            raise ParseError(f"GPU row without an index: {cells[0]!r}")
        used = total = None
        nxt = split_row(lines[i + 1]) if i + 1 < len(lines) else []
        mem = USED_TOTAL.search(nxt[1]) if len(nxt) > 1 else None
        if mem:
            used, total = mib(mem.group(1)), mib(mem.group(2))
        out.append(ToolDevice(index=int(tokens[0]), model=" ".join(tokens[1:]) or None,
                              bus_id=normalize_bus_id(cells[1]), memory_total_bytes=total,
                              memory_free_bytes=free_from(total, used), driver_version=driver,
                              runtime_version=runtime))
    return out


class Background:
    """``fn(*args)`` in a daemon thread; ``result()`` waits and returns or re-raises.

    Plain threading rather than concurrent.futures: that import (logging and all) costs
    more start-up than a cached probe is allowed."""

    def __init__(self, fn: Callable, *args, **kwargs) -> None:
        self._value = self._error = None
        self._thread = threading.Thread(target=self._run, args=(fn, args, kwargs), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable, args: tuple, kwargs: dict) -> None:
        try:
            self._value = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller of result()
            self._error = exc

    def result(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value
