"""The chat page's server side without a browser: document text extraction (real python-docx
and pypdf on generated files), its limits and messages, and what webui.mount serves (headers,
gzip, the committed build's integrity)."""

from __future__ import annotations

import gzip
import io
import re
import zipfile

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from aiboxctl.webui import CSP, WebSettings, mount, static_dir
from aiboxctl.webui.extract import ExtractError, ExtractLimits, extract_text


def _docx(paragraphs: list[str], table: list[list[str]] | None = None) -> bytes:
    import docx

    d = docx.Document()
    for p in paragraphs:
        d.add_paragraph(p)
    if table:
        t = d.add_table(rows=len(table), cols=len(table[0]))
        for r, row in enumerate(table):
            for c, text in enumerate(row):
                t.cell(r, c).text = text
    d.add_paragraph("表后的段落")
    buf = io.BytesIO()
    d.save(buf)
    return buf.getvalue()


def _pdf(lines: list[str]) -> bytes:
    """A minimal one-page PDF with a Helvetica text line per entry (ASCII)."""
    stream = "BT /F1 12 Tf 72 720 Td " + " ".join(f"({s}) Tj 0 -16 Td" for s in lines) + " ET"
    objects = ["<< /Type /Catalog /Pages 2 0 R >>", "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
               "/Resources << /Font << /F1 5 0 R >> >> >>",
               f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream",
               "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = b"%PDF-1.4\n", []
    for i, obj in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n{obj}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def test_docx_paragraphs_and_tables_in_document_order():
    got = extract_text("通知.docx", _docx(["关于开会的通知", "时间：三月十二日"], [["科室", "人数"], ["办公室", "3"]]))
    assert got.kind == "docx" and not got.truncated
    assert got.text.splitlines()[:4] == ["关于开会的通知", "时间：三月十二日", "| 科室 | 人数 |", "| 办公室 | 3 |"]
    assert got.text.endswith("表后的段落")


def test_pdf_text_and_page_count():
    got = extract_text("report.PDF", _pdf(["Quarterly report", "Revenue grew 12 percent"]))
    assert got.kind == "pdf" and got.pages == 1
    assert "Quarterly report" in got.text and "Revenue grew 12 percent" in got.text


def test_plain_text_utf8_bom_and_gb18030():
    assert extract_text("a.md", "\ufeff# 标题\r\n正文".encode("utf-8")).text == "# 标题\n正文"
    assert extract_text("b.txt", "政务公开".encode("gb18030")).text == "政务公开"


@pytest.mark.parametrize("name,data,status,code,words", [
    ("a.exe", b"MZ", 415, "unsupported_file_type", ".txt, .md, .docx or .pdf"),
    ("a.txt", b"", 422, "empty_file", "empty"),
    ("a.txt", b"x" * 2048, 413, "file_too_large", "limit"),
    ("a.docx", b"not a zip", 422, "unreadable_document", "damaged"),
    ("a.pdf", b"%PDF-1.4 garbage", 422, "unreadable_document", "could not be read"),
    ("a.txt", b"   \n ", 422, "no_text", "no text"),
])
def test_unusable_files_get_one_clear_message(name, data, status, code, words):
    with pytest.raises(ExtractError) as err:
        extract_text(name, data, ExtractLimits(max_bytes=1024))
    assert (err.value.status, err.value.code) == (status, code) and words in err.value.message


def test_a_docx_that_unpacks_too_large_is_refused_before_parsing():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("word/document.xml", b"\0" * (4 << 20))  # 4 MB of zeros: a few KB zipped
    with pytest.raises(ExtractError) as err:
        extract_text("bomb.docx", buf.getvalue(), ExtractLimits(max_unpacked_bytes=1 << 20))
    assert err.value.code == "file_too_large" and "unpacks to" in err.value.message


def test_long_text_is_cut_and_says_so():
    got = extract_text("long.txt", ("字" * 50).encode(), ExtractLimits(max_chars=20))
    assert got.truncated and got.chars == 50 and len(got.text) == 20


@pytest.fixture
def client():
    async def guard(request):
        from fastapi.responses import JSONResponse

        if request.headers.get("authorization") != "Bearer k":
            return JSONResponse({"error": {"message": "invalid API key", "code": "invalid_api_key"}}, status_code=401)
        return None

    app = FastAPI()
    mount(app, WebSettings(), guard=guard)
    return TestClient(app)


def test_page_and_assets_headers(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["cache-control"] == "no-cache"
    assert page.headers["content-security-policy"] == CSP and "connect-src 'self'" in CSP
    names = re.findall(r'"/assets/([^"]+)"', page.text)
    assert len(names) == 2
    for name in names:
        r = client.get(f"/assets/{name}", headers={"Accept-Encoding": "gzip"})
        assert r.status_code == 200 and r.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert r.headers["content-encoding"] == "gzip"
        assert r.content == (static_dir() / "assets" / name).read_bytes()  # httpx undid the gzip
    assert client.get("/assets/nothing.js").status_code == 404
    assert client.get("/assets/..%2F..%2F__init__.py").status_code == 404


def test_committed_build_is_whole_and_small():
    """The committed page names only files that exist, and stays within the issue's 300 KB
    compressed (`cd web && npm ci && npm run check` proves it matches the sources)."""
    index = (static_dir() / "index.html").read_text()
    names = re.findall(r'"/assets/([^"]+)"', index)
    files = {p.name for p in (static_dir() / "assets").iterdir()}
    assert set(names) <= files
    assert {n for n in files if not n.endswith(".LEGAL.txt")} == set(names), "stale assets left in static/"
    weight = len(gzip.compress(index.encode())) + sum(
        len(gzip.compress((static_dir() / "assets" / n).read_bytes())) for n in names)
    assert weight < 300_000


def test_extract_endpoint_needs_the_key_and_stores_nothing(client, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    body = _docx(["第七会议室"])
    assert client.post("/v1/aibox/extract?name=a.docx", content=body).status_code == 401
    r = client.post("/v1/aibox/extract?name=%E9%80%9A%E7%9F%A5.docx", content=body, headers={"Authorization": "Bearer k"})
    assert r.status_code == 200 and r.json()["name"] == "通知.docx" and "第七会议室" in r.json()["text"]
    assert r.headers["cache-control"] == "no-store"
    assert list(tmp_path.iterdir()) == []
    bad = client.post("/v1/aibox/extract?name=a.zip", content=b"x", headers={"Authorization": "Bearer k"})
    assert bad.status_code == 415 and bad.json()["error"]["code"] == "unsupported_file_type"
    big = client.post("/v1/aibox/extract?name=a.txt", content=b"x" * (11 << 20), headers={"Authorization": "Bearer k"})
    assert big.status_code == 413


def test_presets_are_served_without_a_key(client):
    data = client.get("/v1/aibox/web").json()
    assert [p["name_zh"] for p in data["presets"]] == ["问答", "公文写作", "摘要", "翻译"]
    assert data["default_lang"] == "zh-CN"
