"""Document text for the chat page: .txt/.md/.docx/.pdf bytes in, plain text out.

Nothing is written anywhere: the bytes arrive in memory, the text goes back in the answer. The
parsers are python-docx and pypdf; what this module adds are the limits a front door needs
(size in, size of a .docx's unpacked parts, pages, characters out) and one clear message for
each way a file can be unusable.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import PurePosixPath

KINDS = {".txt": "text", ".md": "text", ".markdown": "text", ".docx": "docx", ".pdf": "pdf"}


class ExtractError(Exception):
    """A document this endpoint cannot read; ``status`` and ``code`` are the HTTP answer."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class ExtractLimits:
    max_bytes: int = 10 << 20  # the upload itself
    max_unpacked_bytes: int = 64 << 20  # a .docx's parts once unzipped (a zip bomb stops here)
    max_pages: int = 500  # of a PDF
    max_chars: int = 400_000  # of text returned (the page truncates further to the context)


@dataclass(frozen=True)
class Extracted:
    name: str
    kind: str
    text: str
    chars: int  # of the whole document's text, before max_chars
    truncated: bool  # max_chars or max_pages cut it
    pages: int | None = None


def kind_of(name: str) -> str:
    suffix = PurePosixPath(name.replace("\\", "/")).suffix.lower()
    kind = KINDS.get(suffix)
    if kind is None:
        raise ExtractError(415, "unsupported_file_type",
                           f"'{suffix or name}' files are not supported; attach a .txt, .md, .docx or .pdf file")
    return kind


def extract_text(name: str, data: bytes, limits: ExtractLimits = ExtractLimits()) -> Extracted:
    kind = kind_of(name)
    if len(data) > limits.max_bytes:
        raise ExtractError(413, "file_too_large",
                           f"the file is {len(data) / 1e6:.1f} MB; the limit is {limits.max_bytes / 1e6:.1f} MB")
    if not data:
        raise ExtractError(422, "empty_file", "the file is empty")
    pages = None
    cut = False
    if kind == "text":
        text = _decode(data)
    elif kind == "docx":
        text = _docx(data, limits)
    else:
        text, pages, cut = _pdf(data, limits)
    text = text.replace("\r\n", "\n").strip()
    if not text:
        raise ExtractError(422, "no_text", "the document has no text (a scanned PDF needs OCR first)"
                           if kind == "pdf" else "the document has no text")
    total = len(text)
    if total > limits.max_chars:
        text, cut = text[: limits.max_chars], True
    return Extracted(name=PurePosixPath(name.replace("\\", "/")).name, kind=kind, text=text, chars=total,
                     truncated=cut, pages=pages)


def _decode(data: bytes) -> str:
    """UTF-8 (with or without BOM), else GB18030 — what Chinese office machines save plain text as."""
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise ExtractError(422, "unreadable_text", "the text file is neither UTF-8 nor GB18030")


def _docx(data: bytes, limits: ExtractLimits) -> str:
    import docx
    from docx.table import Table

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            unpacked = sum(i.file_size for i in z.infolist())
    except zipfile.BadZipFile:
        raise ExtractError(422, "unreadable_document", "the .docx file is damaged or not a Word document") from None
    if unpacked > limits.max_unpacked_bytes:
        raise ExtractError(413, "file_too_large",
                           f"the .docx unpacks to {unpacked / 1e6:.0f} MB; the limit is "
                           f"{limits.max_unpacked_bytes / 1e6:.0f} MB")
    try:
        document = docx.Document(io.BytesIO(data))
    except Exception as exc:  # python-docx raises several types for a broken package
        raise ExtractError(422, "unreadable_document",
                           f"the .docx file could not be read ({type(exc).__name__})") from None
    out: list[str] = []
    for block in document.iter_inner_content():
        if isinstance(block, Table):
            for row in block.rows:
                out.append("| " + " | ".join(c.text.strip().replace("\n", " ") for c in row.cells) + " |")
            out.append("")
        else:
            out.append(block.text)
    return "\n".join(out)


def _pdf(data: bytes, limits: ExtractLimits) -> tuple[str, int, bool]:
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise ExtractError(422, "encrypted_document", "the PDF is password-protected; remove the password first")
        pages = len(reader.pages)
        parts = [page.extract_text() or "" for page in reader.pages[: limits.max_pages]]
    except ExtractError:
        raise
    except Exception as exc:  # pypdf raises many types on a malformed file; each is the same answer
        raise ExtractError(422, "unreadable_document",
                           f"the PDF could not be read ({type(exc).__name__})") from None
    return "\n\n".join(parts), pages, pages > limits.max_pages
