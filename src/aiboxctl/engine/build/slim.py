"""Slim a llama-cpp-python wheel before it enters the wheel cache.

A zip has no symbolic links, so scikit-build-core writes every shared library of the wheel
three times (``libllama.so``, ``libllama.so.0``, ``libllama.so.0.5.0``) and the whole set again
under a root ``lib/`` folder beside ``llama_cpp/lib/``: 15.6 of the portable CPU wheel's 26.8 MiB.
What a program asks for is known exactly, so only those names stay:

* the names llama_cpp's modules hand to ctypes (``load_shared_library("ggml", …)``,
  ``_lib_base_name = "llama"``): ``llama_cpp/lib/lib<name>.so``;
* the backend modules ggml loads from a folder by name (``libggml-<backend>[-<variant>].so``
  in the folder of the CPU modules, ``bin/``: the only one the engine hands to ggml);
* every ``DT_NEEDED`` name of a kept library that its ``RUNPATH``/``RPATH`` (``$ORIGIN``…)
  finds inside the wheel, and, for a library without a run path (the backend modules), the
  library kept under that ``DT_SONAME`` (the loader matches a loaded object by its soname),
  until nothing new is asked for.

Everything else that is an ELF file goes, with the CMake and pkg-config files of a folder none
of whose libraries stay (they describe what is gone). Before the new wheel is written, every
needed name a kept library found inside the original wheel must still be found, else nothing is
written. ``RECORD`` is written anew from the kept members (sha256 and size of each). The dynamic
sections are read with pyelftools."""

from __future__ import annotations

import base64
import copy
import csv
import hashlib
import io
import os
import posixpath
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

from aiboxctl.errors import AiboxError

_CTYPES_NAME = re.compile(r"""(?:_base_name\s*=\s*|load_shared_library\(\s*)["']([\w.+-]+)["']""")
_BACKEND_MODULE = re.compile(r"libggml-(?!base\.so$)[\w+-]+\.so")
_ELF_MAGIC = b"\x7fELF"


@dataclass(frozen=True)
class ElfEntry:
    member: str  # the path inside the wheel
    soname: str | None
    needed: tuple[str, ...]
    runpath: tuple[str, ...]  # DT_RUNPATH, else DT_RPATH, split on ':'


@dataclass(frozen=True)
class SlimResult:
    original_bytes: int
    slim_bytes: int
    dropped: tuple[str, ...]  # members removed (ELF copies nothing asks for, their CMake files)

    @property
    def changed(self) -> bool:
        return bool(self.dropped)


def read_elf(member: str, data: bytes) -> ElfEntry:
    """The dynamic-linking names of one ELF file (pyelftools)."""
    from elftools.elf.dynamic import DynamicSection
    from elftools.elf.elffile import ELFFile

    elf = ELFFile(io.BytesIO(data))
    soname, needed, runpath, rpath = None, [], [], []
    for section in elf.iter_sections():
        if not isinstance(section, DynamicSection):
            continue
        for tag in section.iter_tags():
            if tag.entry.d_tag == "DT_NEEDED":
                needed.append(tag.needed)
            elif tag.entry.d_tag == "DT_SONAME":
                soname = tag.soname
            elif tag.entry.d_tag == "DT_RUNPATH":
                runpath += [p for p in tag.runpath.split(":") if p]
            elif tag.entry.d_tag == "DT_RPATH":
                rpath += [p for p in tag.rpath.split(":") if p]
    return ElfEntry(member, soname, tuple(needed), tuple(runpath or rpath))


def _search_dirs(entry: ElfEntry) -> list[str]:
    """The run-path folders of ``entry`` that lie inside the wheel (``$ORIGIN``-relative)."""
    origin = posixpath.dirname(entry.member)
    out = []
    for raw in entry.runpath:
        for token in ("${ORIGIN}", "$ORIGIN"):
            if raw.startswith(token):
                rel = posixpath.normpath(posixpath.join(origin, raw[len(token):].lstrip("/"))) if raw != token else origin
                if not rel.startswith(".."):
                    out.append("" if rel == "." else rel)
                break
    return out


def _resolve(entry: ElfEntry, name: str, members: set[str]) -> str | None:
    """Where the loader finds ``name`` for ``entry`` inside the wheel through its run path."""
    for folder in _search_dirs(entry):
        candidate = posixpath.join(folder, name) if folder else name
        if candidate in members:
            return candidate
    return None


def ctypes_roots(zf: zipfile.ZipFile, members: set[str]) -> list[str]:
    """``<pkg>/lib/lib<name>.so`` for every name llama_cpp's modules load through ctypes."""
    roots: list[str] = []
    for member in sorted(members):
        if not member.endswith(".py") or member.count("/") != 1:
            continue
        names = _CTYPES_NAME.findall(zf.read(member).decode("utf-8", errors="replace"))
        for name in names:
            lib = f"{posixpath.dirname(member)}/lib/lib{name}.so"
            if lib in members and lib not in roots:
                roots.append(lib)
    return roots


def backend_modules(elves: dict[str, ElfEntry]) -> list[str]:
    """The backend modules ggml loads: ``libggml-<backend>[-<variant>].so`` in the folders the
    engine hands to ``ggml_backend_load_all_from_path`` — those holding a CPU backend module
    (``site-packages/bin`` of a ``GGML_BACKEND_DL`` build; see
    :func:`aiboxctl.engine.llama.backend_variant_dirs`). ggml loads only from the folder it is
    given, so another folder's copy (``llama_cpp/lib/libggml-cuda.so``) is never loaded. With
    no such folder, every backend module is kept."""
    modules = [m for m in elves if _BACKEND_MODULE.fullmatch(posixpath.basename(m))]
    scanned = {posixpath.dirname(m) for m in modules if posixpath.basename(m).startswith("libggml-cpu")}
    return [m for m in modules if posixpath.dirname(m) in scanned] if scanned else modules


def plan_slim(zf: zipfile.ZipFile) -> set[str]:
    """The members to keep of the wheel open in ``zf``."""
    member_set = {i.filename for i in zf.infolist() if not i.is_dir()}
    roots = ctypes_roots(zf, member_set)
    if not roots:  # not llama-cpp-python's layout: nothing is known to be unused
        return member_set
    elves: dict[str, ElfEntry] = {}
    for info in zf.infolist():
        if info.is_dir() or info.file_size < 64:
            continue
        with zf.open(info) as f:
            if f.read(4) != _ELF_MAGIC:
                continue
        try:
            elves[info.filename] = read_elf(info.filename, zf.read(info))
        except Exception as exc:  # pyelftools raises its own and struct errors on a damaged file
            raise AiboxError(f"cannot read the shared library {info.filename} in the engine wheel: {exc}",
                             code="wheel_slim_failed") from exc
    roots += [m for m in backend_modules(elves) if m not in roots]

    kept: dict[str, None] = {}
    queue = list(roots)
    while queue:
        member = queue.pop(0)
        if member in kept:
            continue
        kept[member] = None
        entry = elves[member]
        for name in entry.needed:
            found = _resolve(entry, name, member_set)
            if found is None:
                # no run path into the wheel (the backend modules): the loader takes an already
                # loaded object of that soname; keep one when none of the kept ones has it yet
                found = next((m for m in kept if elves[m].soname == name), None)
                if found is None and any(e.soname == name for e in elves.values()):
                    queue.append(_by_preference(elves, name, roots)[0])
                continue
            if found in elves:
                queue.append(found)

    drop_elf = {m for m in elves if m not in kept}
    dead_folders = {posixpath.dirname(m) for m in drop_elf} - {posixpath.dirname(m) for m in kept}
    drop = set(drop_elf)
    for folder in dead_folders:
        for sub in ("cmake/", "pkgconfig/"):
            prefix = posixpath.join(folder, sub) if folder else sub
            drop.update(m for m in member_set if m.startswith(prefix))
    _check(elves, kept, member_set)
    return member_set - drop


def _by_preference(elves: dict[str, ElfEntry], soname: str, roots: list[str]) -> list[str]:
    """Files carrying ``soname``: first those named so in a root's folder (where the ctypes
    libraries and their run path live), then any named so, then any."""
    root_dirs = {posixpath.dirname(r) for r in roots}
    have = [m for m, e in elves.items() if e.soname == soname]
    return sorted(have, key=lambda m: (posixpath.dirname(m) not in root_dirs, posixpath.basename(m) != soname, m))


def _check(elves: dict[str, ElfEntry], kept: dict[str, None], members: set[str]) -> None:
    """Every needed name a kept library found inside the wheel is still found after slimming."""
    kept_members = set(kept)
    kept_sonames = {elves[m].soname for m in kept if elves[m].soname}
    for member in kept:
        entry = elves[member]
        for name in entry.needed:
            if _resolve(entry, name, members) is not None:  # found through the run path: still so
                lost = _resolve(entry, name, kept_members) is None
            elif any(e.soname == name for e in elves.values()):  # found loaded, by soname
                lost = name not in kept_sonames
            else:
                continue  # a system library (libc, libcudart…): not the wheel's business
            if lost:
                raise AiboxError(f"slimming the engine wheel would lose {name}, which {member} needs",
                                 code="wheel_slim_failed")


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def slim_wheel(wheel: Path, dest: Path | None = None) -> SlimResult:
    """Write ``wheel`` without the library copies nothing asks for to ``dest`` (default: in
    place, through a temporary file). A wheel with nothing to drop is left untouched."""
    wheel = Path(wheel)
    dest = Path(dest) if dest else wheel
    original = wheel.stat().st_size
    with zipfile.ZipFile(wheel) as zf:
        keep = plan_slim(zf)
        dropped = tuple(i.filename for i in zf.infolist() if not i.is_dir() and i.filename not in keep)
        if not dropped:
            if dest != wheel:
                shutil.copyfile(wheel, dest)
            return SlimResult(original, original, ())
        records = [m for m in keep if m.endswith(".dist-info/RECORD") and m.count("/") == 1]
        if len(records) != 1:
            raise AiboxError(f"{wheel.name} has {len(records)} RECORD files; not slimming it", code="wheel_slim_failed")
        record = records[0]
        tmp = dest.with_name(dest.name + ".slim-partial")
        rows: list[list[str]] = []
        try:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as out:
                for info in zf.infolist():
                    if info.is_dir() or info.filename not in keep or info.filename == record:
                        continue
                    data = zf.read(info)
                    out.writestr(copy.copy(info), data, compress_type=zipfile.ZIP_DEFLATED)
                    rows.append([info.filename, _record_hash(data), str(len(data))])
                rows.append([record, "", ""])
                buf = io.StringIO()
                csv.writer(buf, lineterminator="\n").writerows(rows)
                out.writestr(copy.copy(zf.getinfo(record)), buf.getvalue(), compress_type=zipfile.ZIP_DEFLATED)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
    return SlimResult(original, dest.stat().st_size, dropped)
