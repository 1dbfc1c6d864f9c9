"""Builders of test documents, made by the tests themselves: PDFs (written object by object), DOCX files
(python-docx), a DOCX zip bomb, scanned pages (text drawn with Pillow) and scanned or mixed PDFs of them, and
near copies of a text (a few words changed)."""

from __future__ import annotations

import io
import random
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any


def make_pdf(pages: list[list[str]], image_only: bool = False) -> bytes:
    """A PDF with one page per entry, each line of text drawn in Helvetica; `image_only` draws only a
    rectangle on every page, as a scan without a text layer would show."""
    objects: list[bytes] = [b"", b"", b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    kids = []
    for lines in pages:
        if image_only:
            stream = b"0.5 g 72 72 400 600 re f"
        else:
            ops = [b"BT /F1 12 Tf 14 TL 72 760 Td"]
            for line in lines:
                escaped = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
                ops.append(b"(" + escaped.encode("latin-1") + b") Tj T*")
            ops.append(b"ET")
            stream = b"\n".join(ops)
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
        content = len(objects)
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents %d 0 R "
            b"/Resources << /Font << /F1 3 0 R >> >> >>" % content
        )
        kids.append(len(objects))
    objects[0] = b"<< /Type /Catalog /Pages 2 0 R >>"
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (
        b" ".join(b"%d 0 R" % kid for kid in kids),
        len(kids),
    )
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n%s\nendobj\n" % (number, body))
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def encrypt_pdf(pdf: bytes, password: str) -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf)))
    writer.encrypt(user_password=password, owner_password=password + "-owner", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def make_docx(blocks: list[tuple[str, str | list[list[str]]]]) -> bytes:
    """A DOCX from (kind, content) blocks: ("h1".."h3", text), ("p", text), ("li", text), ("table", rows)."""
    import docx

    document = docx.Document()
    for kind, content in blocks:
        if kind.startswith("h"):
            assert isinstance(content, str)
            document.add_heading(content, level=int(kind[1:]))
        elif kind == "p":
            assert isinstance(content, str)
            document.add_paragraph(content)
        elif kind == "li":
            assert isinstance(content, str)
            document.add_paragraph(content, style="List Bullet")
        else:
            assert isinstance(content, list)
            table = document.add_table(rows=len(content), cols=len(content[0]))
            for row, cells in zip(table.rows, content, strict=True):
                for cell, text in zip(row.cells, cells, strict=True):
                    cell.text = text
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def make_zip_bomb(unpacked_mib: int) -> bytes:
    """A "DOCX" whose document.xml inflates to `unpacked_mib` MiB of zeros from a few KiB."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        with archive.open("word/document.xml", "w", force_zip64=True) as member:
            block = b"\0" * (1 << 20)
            for _ in range(unpacked_mib):
                member.write(block)
    return out.getvalue()


NOTO_CJK = Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc")  # Debian fonts-noto-cjk


def scanned_page(lines: list[str], font_px: int = 30) -> Any:
    """A white 1700x2200 page (A4-ish at 200 dpi) with `lines` drawn in Noto Sans CJK, which covers Latin
    and Chinese, as a scanner would give it: one grayscale image."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(str(NOTO_CJK), font_px)
    page = Image.new("L", (1700, 2200), 255)
    draw = ImageDraw.Draw(page)
    for number, line in enumerate(lines):
        draw.text((150, 150 + number * 2 * font_px), line, font=font, fill=0)
    return page


def images_pdf(images: list[Any]) -> bytes:
    """A PDF of one page per image and nothing else (no text layer), as a scanner writes it."""
    out = io.BytesIO()
    images[0].save(out, "PDF", save_all=True, append_images=images[1:], resolution=200)
    return out.getvalue()


def join_pdfs(*pdfs: bytes) -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    for pdf in pdfs:
        writer.append(PdfReader(io.BytesIO(pdf)))
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims `width` x `height` 1-bit pixels and holds none: what a decompression bomb's
    header looks like, at no cost to make."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def edited(text: str, changes: int, seed: int) -> str:
    """The text with `changes` randomly chosen words replaced by "changed": a near copy of it."""
    rng = random.Random(seed)
    words = text.split()
    for _ in range(changes):
        words[rng.randrange(len(words))] = "changed"
    return " ".join(words)
