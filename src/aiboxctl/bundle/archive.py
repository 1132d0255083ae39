"""Writing and reading bundle archives (tar, optionally zstd), safely and in one pass each.

Writing streams every member from its source file into the archive (no staging copy) and
hashes it on the way; the result must equal the sha256 recorded in the manifest beforehand,
so a file that changed while being packed cannot slip in.

Reading is always sequential (``tarfile`` stream mode), which works the same for plain and
zstd archives. Every member is checked before a byte of it is used: its name must stay inside
the bundle (no absolute path, no ``..``), it must be a regular file (links, devices and fifos
are refused, with tarfile's ``data`` filter naming links that point outside), it must be listed
in the manifest exactly once with the same size, and its sha256 must match. A member that the
manifest lists but the archive lacks means the archive is truncated.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tarfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from aiboxctl.bundle.manifest import (
    FOREIGN_HINT,
    MANIFEST_NAME,
    BundleError,
    BundleManifest,
    Member,
    check_member_name,
)
from aiboxctl.errors import VerificationFailed

_CHUNK = 4 * 1024 * 1024
_MAX_MANIFEST_BYTES = 16 * 1024 * 1024
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# tarfile's data filter wants a destination; bundles are checked before one exists.
_CHECK_DEST = "/aibox-bundle-check"


def zstd_available() -> bool:
    try:
        import zstandard  # noqa: F401
    except ImportError:
        return False
    return True


def _zstd_module():
    try:
        import zstandard
    except ImportError:
        raise BundleError("zstd support needs the zstandard package",
                          code="zstd_unavailable", hint="pip install 'aiboxctl[zstd]', or pack with --compress none") from None
    return zstandard


# --- writing -----------------------------------------------------------------------------------


class _HashingReader(io.RawIOBase):
    """Reads a file and hashes what was read."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.digest = hashlib.sha256()
        self.count = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        block = self._fh.read(size)
        self.digest.update(block)
        self.count += len(block)
        return block


class BundleWriter:
    """Writes ``manifest.json`` first, then each listed member, into ``<path>.partial``;
    ``close`` renames it into place (a failed pack leaves no half bundle under the real name)."""

    def __init__(self, path: Path, manifest: BundleManifest, *, mtime: float) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self.partial = self.path.with_name(self.path.name + ".partial")
        self._mtime = int(mtime)
        self._raw = open(self.partial, "wb")
        self._zstd_writer = None
        stream: BinaryIO = self._raw
        if manifest.compress == "zstd":
            zstd = _zstd_module()
            self._zstd_writer = zstd.ZstdCompressor(level=3, threads=-1).stream_writer(self._raw, closefd=False)
            stream = self._zstd_writer
        self._tar = tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT)
        self._written: set[str] = set()
        raw = manifest.to_bytes()
        self.bundle_id = hashlib.sha256(raw).hexdigest()
        self._add(MANIFEST_NAME, io.BytesIO(raw), len(raw), 0o644)

    def _add(self, name: str, fileobj: BinaryIO, size: int, mode: int) -> None:
        info = tarfile.TarInfo(name)
        info.size = size
        info.mode = mode
        info.mtime = self._mtime
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        self._tar.addfile(info, fileobj)

    def add_bytes(self, name: str, data: bytes) -> None:
        member = self._expect(name)
        actual = hashlib.sha256(data).hexdigest()
        if actual != member.sha256 or len(data) != member.size:
            raise VerificationFailed(f"pack: {name} differs from what the manifest records", code="pack_changed")
        self._add(name, io.BytesIO(data), len(data), member.mode)

    def add_file(self, name: str, source: Path) -> None:
        """Stream a file into the archive, re-hashing it: it must still be what was verified."""
        member = self._expect(name)
        with open(source, "rb") as fh:
            reader = _HashingReader(fh)
            try:
                self._add(name, reader, member.size, member.mode)
            except OSError as exc:
                if exc.errno == 28:
                    raise
                raise VerificationFailed(f"pack: {source} changed while being packed ({exc})",
                                         code="pack_changed") from None
        actual = reader.digest.hexdigest()
        if actual != member.sha256:
            raise VerificationFailed(
                f"{source} does not match its recorded sha256 (expected {member.sha256}, got {actual}); "
                "refusing to pack it", code="checksum_mismatch",
                hint="aiboxctl models verify (then pull it again), and re-run aiboxctl pack")

    def _expect(self, name: str) -> Member:
        member = self.manifest.member(name)
        if member is None or name in self._written:
            raise ValueError(f"{name} is not (or no longer) expected in this bundle")
        self._written.add(name)
        return member

    def close(self) -> None:
        missing = [m.path for m in self.manifest.members if m.path not in self._written]
        if missing:
            raise ValueError(f"bundle members never written: {missing}")
        self._tar.close()
        if self._zstd_writer is not None:
            self._zstd_writer.flush(_zstd_module().FLUSH_FRAME)
            self._zstd_writer.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        os.replace(self.partial, self.path)

    def abort(self) -> None:
        # The tar (and zstd) streams are closed first, into the file about to be deleted: left open,
        # the tar stream flushed its buffer into the closed file when it was collected (a
        # "write to closed file" raised in the collector). A full disk may refuse that flush.
        try:
            for stream in (self._tar, self._zstd_writer):
                if stream is not None:
                    with contextlib.suppress(Exception):
                        stream.close()
            self._raw.close()
        finally:
            self.partial.unlink(missing_ok=True)


# --- reading -----------------------------------------------------------------------------------


def _truncated(bundle: Path, detail: str) -> VerificationFailed:
    return VerificationFailed(f"{bundle.name} is truncated or damaged: {detail}", code="bundle_truncated",
                              hint="copy the bundle again and compare its size with the one pack wrote")


@contextmanager
def open_stream(bundle: Path) -> Iterator[tarfile.TarFile]:
    """A sequential tar reader over a plain or zstd bundle (detected by its magic bytes)."""
    bundle = Path(bundle)
    raw = open(bundle, "rb")
    try:
        head = raw.read(4)
        raw.seek(0)
        stream: BinaryIO = raw
        if head == _ZSTD_MAGIC:
            stream = _zstd_module().ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        try:
            tf = tarfile.open(fileobj=stream, mode="r|")
        except tarfile.ReadError as exc:
            size = raw.seek(0, os.SEEK_END)
            if size == 0:
                raise _truncated(bundle, "the file is empty") from None
            if head == _ZSTD_MAGIC or size < 1024:
                # A zstd frame cut short decodes to nothing; a plain tar under two blocks is cut too.
                raise _truncated(bundle, f"no complete tar header ({exc})") from None
            raise VerificationFailed(f"{bundle.name} is not an aiboxctl bundle (not a tar archive: {exc})",
                                     code="bundle_not_a_bundle") from None
        with tf:
            yield tf
    finally:
        raw.close()


def _next(tf: tarfile.TarFile, bundle: Path) -> tarfile.TarInfo | None:
    try:
        return tf.next()
    except (tarfile.ReadError, EOFError) as exc:
        raise _truncated(bundle, str(exc) or type(exc).__name__) from None
    except Exception as exc:  # zstandard.ZstdError: a damaged compressed stream
        if type(exc).__module__.startswith("zstandard"):
            raise _truncated(bundle, f"zstd: {exc}") from None
        raise


def read_manifest(bundle: Path) -> tuple[BundleManifest, str]:
    """The manifest (always the first member) and the bundle id (sha256 of its bytes);
    reads only the start of the archive."""
    bundle = Path(bundle)
    with open_stream(bundle) as tf:
        first = _next(tf, bundle)
        if first is None or first.name != MANIFEST_NAME or not first.isreg():
            raise VerificationFailed(
                f"{bundle.name} is not an aiboxctl bundle (its first member is "
                f"{first.name if first else 'missing'}, not {MANIFEST_NAME})", code="bundle_not_a_bundle")
        if first.size > _MAX_MANIFEST_BYTES:
            raise VerificationFailed(f"{bundle.name}: {MANIFEST_NAME} is implausibly large ({first.size} bytes)",
                                     code="bundle_bad_manifest")
        raw = _read_exact(tf, first, bundle)
    return BundleManifest.from_bytes(raw, source=f"{bundle.name}:{MANIFEST_NAME}"), hashlib.sha256(raw).hexdigest()


def _read_exact(tf: tarfile.TarFile, info: tarfile.TarInfo, bundle: Path) -> bytes:
    fh = tf.extractfile(info)
    try:
        data = fh.read() if fh else b""
    except (tarfile.ReadError, EOFError, OSError) as exc:
        raise _truncated(bundle, f"{info.name}: {exc}") from None
    if len(data) != info.size:
        raise _truncated(bundle, f"{info.name} ends after {len(data)} of {info.size} bytes")
    return data


def check_member_safe(info: tarfile.TarInfo) -> None:
    """Refuse names outside the bundle, links, devices: before anything is read or written."""
    check_member_name(info.name)
    try:
        tarfile.data_filter(info, _CHECK_DEST)
    except tarfile.FilterError as exc:
        raise VerificationFailed(f"bundle member {info.name!r} refused: {exc}", code="bundle_unsafe_member",
                                 hint=FOREIGN_HINT) from None
    if info.issym() or info.islnk():
        raise VerificationFailed(
            f"bundle member {info.name!r} is a link to {info.linkname!r}; bundles carry only regular files",
            code="bundle_unsafe_member", hint=FOREIGN_HINT)
    if not (info.isreg() or info.isdir()):
        raise VerificationFailed(f"bundle member {info.name!r} is not a regular file; refusing it",
                                 code="bundle_unsafe_member")


@dataclass(frozen=True)
class ScanResult:
    members: int
    bytes: int


# A sink decides where a member's bytes go while it is being verified: None = nowhere.
Sink = Callable[[Member], "Path | None"]


def scan_bundle(bundle: Path, manifest: BundleManifest, *, sink: Sink | None = None,
                progress: Callable[[str, int], None] | None = None) -> ScanResult:
    """One sequential pass over every member after the manifest: safety, listing, size and
    sha256. With a sink, each member is written to ``<dest>.incomplete`` while hashed and
    renamed to ``dest`` only once its hash matched; on any failure the files written by this
    pass are removed again."""
    bundle = Path(bundle)
    seen: set[str] = set()
    written: list[Path] = []
    total = 0
    try:
        with open_stream(bundle) as tf:
            first = _next(tf, bundle)
            if first is None or first.name != MANIFEST_NAME:
                raise VerificationFailed(f"{bundle.name} is not an aiboxctl bundle", code="bundle_not_a_bundle")
            while (info := _next(tf, bundle)) is not None:
                check_member_safe(info)
                if info.isdir():
                    continue
                member = manifest.member(info.name)
                if member is None:
                    raise VerificationFailed(f"bundle member {info.name!r} is not listed in the manifest; refusing",
                                             code="bundle_unlisted_member",
                                             hint=FOREIGN_HINT)
                if info.name in seen:
                    raise VerificationFailed(f"bundle member {info.name!r} appears twice; refusing",
                                             code="bundle_duplicate_member")
                seen.add(info.name)
                if info.size != member.size:
                    raise _modified(info.name, f"its size is {info.size} bytes, the manifest says {member.size}")
                dest = sink(member) if sink else None
                actual = _copy_hashed(tf, info, bundle, dest, written)
                if actual != member.sha256:
                    raise _modified(info.name, f"sha256 {actual}, the manifest says {member.sha256}")
                if dest is not None:
                    os.replace(_incomplete(dest), dest)
                total += info.size
                if progress:
                    progress(info.name, info.size)
        missing = [m.path for m in manifest.members if m.path not in seen]
        if missing:
            raise _truncated(bundle, f"the archive ends before {len(missing)} listed member(s), "
                                     f"first {missing[0]!r}")
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
            _incomplete(path).unlink(missing_ok=True)
        raise
    return ScanResult(members=len(seen), bytes=total)


def _modified(name: str, detail: str) -> VerificationFailed:
    return VerificationFailed(f"bundle member {name} was modified: {detail}", code="bundle_member_modified",
                              hint="copy the bundle again from where aiboxctl pack wrote it")


def _incomplete(dest: Path) -> Path:
    return dest.with_name(dest.name + ".incomplete")


def _copy_hashed(tf: tarfile.TarFile, info: tarfile.TarInfo, bundle: Path, dest: Path | None,
                 written: list[Path]) -> str:
    digest = hashlib.sha256()
    fh = tf.extractfile(info)
    out = None
    if dest is not None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        written.append(dest)
        out = open(_incomplete(dest), "wb")
    got = 0
    try:
        while got < info.size:
            try:
                block = fh.read(min(_CHUNK, info.size - got)) if fh else b""
            except (tarfile.ReadError, EOFError) as exc:
                raise _truncated(bundle, f"{info.name}: {exc}") from None
            if not block:
                raise _truncated(bundle, f"{info.name} ends after {got} of {info.size} bytes")
            digest.update(block)
            if out is not None:
                out.write(block)
            got += len(block)
    finally:
        if out is not None:
            out.close()
    return digest.hexdigest()


# --- disk space --------------------------------------------------------------------------------


def _existing_ancestor(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return path


def check_free_space(needs: Mapping[Path, int], *, what: str) -> None:
    """Refuse (before writing anything) when a filesystem lacks room for what goes there.
    ``needs`` maps destination folders to bytes; folders on one filesystem are added up."""
    by_device: dict[int, tuple[Path, int]] = {}
    for folder, size in needs.items():
        anchor = _existing_ancestor(folder)
        dev = anchor.stat().st_dev
        prev = by_device.get(dev)
        by_device[dev] = (prev[0] if prev else anchor, (prev[1] if prev else 0) + size)
    for anchor, size in by_device.values():
        free = shutil.disk_usage(anchor).free
        # Leave a little headroom: filesystems reserve blocks and others write too.
        need = size + min(size // 50, 1 << 30) + (16 << 20)
        if free < need:
            raise BundleError(
                f"not enough disk space at {anchor} for {what}: needs {_human(need)}, {_human(free)} free",
                code="insufficient_disk", hint="free space there, or point AIBOX_HOME / --root at a larger disk")


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
