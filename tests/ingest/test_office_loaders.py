"""Spreadsheets (XLSX, CSV) and slides (PPTX), on files the tests write with openpyxl and python-pptx: sheets
and slides as sections, rows that carry their column headers into every chunk of a large table, values as a
person reads them, Chinese text, speaker notes; and broken files failing alone with a clear reason."""

from __future__ import annotations

import datetime as dt
import io
import re
import zipfile
from pathlib import Path
from typing import Any

import pytest

from ingest.config import ChunkerConfig, IngestConfig
from ingest.loaders import LoadError, load_file
from ingest.office import sniff_delimiter
from ingest.pipeline import Ingestor
from retriever.store import KnowledgeBase
from tests.ingest.documents import make_docx, make_zip_bomb

CONFIG = IngestConfig()


def load_text(name: str, raw: bytes) -> tuple[str, str, str]:
    """(title, file type, text) of a file that loads as one document."""
    [document] = load_file(Path(name), raw, CONFIG).documents
    [text] = document.parts
    return document.title, document.file_type, text


def saved(document: Any) -> bytes:
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def with_cached_value(xlsx: bytes, formula: str, value: str) -> bytes:
    """The workbook with `formula`'s cached result filled in, as Excel stores it (openpyxl writes none)."""
    source = zipfile.ZipFile(io.BytesIO(xlsx))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename.startswith("xl/worksheets/"):
                empty, cached = f"<f>{formula}</f><v></v>", f"<f>{formula}</f><v>{value}</v>"
                data = data.replace(empty.encode(), cached.encode())
            target.writestr(item, data)
    return out.getvalue()


def make_xlsx() -> bytes:
    import openpyxl

    workbook = openpyxl.Workbook()
    stores = workbook.active
    stores.title = "Stores"
    stores.append(["Harbour stores, spring"])  # a caption above the table
    stores.append([])
    stores.append(["Item", None, "Count", "Price", "Delivered", "Share", "Checked", "仓库"])
    stores.append(["Rope", None, 12.0, 3.5, dt.datetime(2024, 3, 1), 0.25, True, "上海港"])
    stores.append([None] * 8)
    stores.append(["Tar", None, 7, 0.1 + 0.2, dt.datetime(2024, 3, 2, 14, 30), 0.125, False, "北京仓库"])
    stores.append(["Total", None, "=C4+C6", None, dt.date(2024, 4, 1)])
    stores["F4"].number_format = "0%"
    stores["F6"].number_format = "0.0%"
    workbook.create_sheet("Blank")
    crew = workbook.create_sheet("Crew")
    crew.append(["# of voyages", "Name"])  # a cell must not turn its row into a Markdown heading
    crew.append([14, "Ada"])
    return with_cached_value(saved(workbook), "C4+C6", "19")


def test_xlsx_sheets_are_sections_and_rows_keep_their_headers() -> None:
    title, file_type, text = load_text("stores.xlsx", make_xlsx())
    assert (title, file_type) == ("stores", "xlsx")
    assert text == (
        "# Stores\n\n"
        "Harbour stores, spring\n"
        "Item: Rope | Count: 12 | Price: 3.5 | Delivered: 2024-03-01 | Share: 25% | Checked: TRUE"
        " | 仓库: 上海港\n"
        "Item: Tar | Count: 7 | Price: 0.3 | Delivered: 2024-03-02 14:30:00 | Share: 12.5% | Checked: FALSE"
        " | 仓库: 北京仓库\n"
        "Item: Total | Count: 19 | Delivered: 2024-04-01\n\n"
        "# Crew\n\n"
        "\\# of voyages: 14 | Name: Ada"
    )


@pytest.mark.parametrize(
    ("raw", "delimiter"),
    [
        ("Port,Depth\nOslo,12\nBergen,9\n".encode("utf-8-sig"), ","),
        ("Port;Depth\nOslo;12,5\nBergen;9\n".encode("cp1252"), ";"),
        ("Port\tDepth\nOslo\t12\nBergen\t9\n".encode("utf-16"), "\t"),
    ],
)
def test_csv_delimiter_and_encoding_are_detected(raw: bytes, delimiter: str) -> None:
    title, file_type, text = load_text("ports.csv", raw)
    assert (title, file_type) == ("ports", "csv")
    depth = "12,5" if delimiter == ";" else "12"
    assert text == f"# ports\n\nPort: Oslo | Depth: {depth}\nPort: Bergen | Depth: 9"


def test_csv_in_chinese_excel_encoding_with_quoted_fields() -> None:
    rows = "产品名称,销售区域,负责人\n" + "".join(f'产品{i},"华东地区, 上海",王经理\n' for i in range(5))
    _, _, text = load_text("销售.csv", rows.encode("gbk"))
    assert text.startswith("# 销售\n\n产品名称: 产品0 | 销售区域: 华东地区, 上海 | 负责人: 王经理\n")
    assert sniff_delimiter("just one column\nof text, with a comma\n") == ","


def make_pptx() -> bytes:
    import pptx
    from pptx.util import Inches

    presentation = pptx.Presentation()
    opening = presentation.slides.add_slide(presentation.slide_layouts[1])
    opening.shapes.title.text = "Harbour plan"
    opening.placeholders[1].text_frame.text = "Dredge the channel\nMove the buoys"
    opening.notes_slide.notes_text_frame.text = "Mention the 2019 storm."
    blank = presentation.slides.add_slide(presentation.slide_layouts[6])
    blank.shapes.add_textbox(Inches(1), Inches(4), Inches(3), Inches(1)).text_frame.text = "Lower box"
    blank.shapes.add_textbox(Inches(1), Inches(2), Inches(3), Inches(1)).text_frame.text = "Upper box 上层"
    table = blank.shapes.add_table(3, 2, Inches(1), Inches(5), Inches(4), Inches(1)).table
    for r, row in enumerate([["Port", "Depth"], ["Oslo", "12"], ["Bergen", ""]]):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    group = blank.shapes.add_group_shape()
    group.shapes.add_textbox(Inches(5), Inches(1), Inches(2), Inches(1)).text_frame.text = "Grouped note"
    return saved(presentation)


def make_media_only_pptx() -> bytes:
    """A slide holding a picture and nothing to read."""
    import pptx
    from PIL import Image
    from pptx.util import Inches

    picture = io.BytesIO()
    Image.new("RGB", (64, 64), "navy").save(picture, "PNG")
    picture.seek(0)
    presentation = pptx.Presentation()
    slide = presentation.slides.add_slide(presentation.slide_layouts[6])
    slide.shapes.add_picture(picture, Inches(1), Inches(1))
    return saved(presentation)


def test_pptx_slides_are_sections_in_reading_order_with_notes() -> None:
    title, file_type, text = load_text("plan.pptx", make_pptx())
    assert (title, file_type) == ("Harbour plan", "pptx")
    assert text == (
        "# Slide 1: Harbour plan\n\nDredge the channel\nMove the buoys\n\nNotes: Mention the 2019 storm.\n\n"
        "# Slide 2\n\nGrouped note\n\nUpper box 上层\n\nLower box\n\nPort: Oslo | Depth: 12\nPort: Bergen"
    )


def make_empty_xlsx() -> bytes:
    import openpyxl

    return saved(openpyxl.Workbook())


# How an encrypted (or a legacy binary) Office file starts: an OLE compound document, not a ZIP.
OLE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504)
BAD_FILES = {
    "garbage.xlsx": (b"this is not a spreadsheet", "not a valid XLSX file"),
    "locked.xlsx": (OLE, "password-protected (encrypted)"),
    "locked.pptx": (OLE, "password-protected (encrypted)"),
    "letter.pptx": (make_docx([("p", "Dear keeper")]), "not a valid PPTX file"),
    "slides.xlsx": (make_pptx(), "not a valid XLSX file"),
    "cut.pptx": (make_pptx()[:4000], "not a valid PPTX file"),
    "bomb.xlsx": (make_zip_bomb(60), "zip bomb"),
    "empty.xlsx": (make_empty_xlsx(), "workbook without any text"),
    "media.pptx": (make_media_only_pptx(), "presentation without any text"),
    "commas.csv": (b",,,\n,,\n", "CSV file without any text"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_broken_office_files_are_refused_with_a_reason(name: str) -> None:
    raw, reason = BAD_FILES[name]
    with pytest.raises(LoadError, match=re.escape(reason)) as refused:
        load_file(Path(name), raw, CONFIG)
    if not reason.startswith("not a valid"):  # a reason of its own is not reported as a damaged file
        assert "not a valid" not in str(refused.value)


def fleet_xlsx(rows: int) -> bytes:
    """A sheet too large for one chunk, and a small one."""
    import openpyxl

    workbook = openpyxl.Workbook()
    fleet = workbook.active
    fleet.title = "Fleet"
    fleet.append(["Ship", "Home port", "Tonnage", "Cargo"])
    ports = ["Oslo", "Bergen", "Hamburg", "Rotterdam", "Antwerp", "Lisbon", "Genoa"]
    for i in range(rows):
        cargo = "saffron" if i == 37 else f"crates lot {i * 13}"
        fleet.append([f"Vessel {i}", ports[i % len(ports)], 1000 + 37 * i, cargo])
    crew = workbook.create_sheet("船员")
    crew.append(["姓名", "职务"])
    crew.append(["张伟", "船长"])
    crew.append(["李娜", "大副"])
    return saved(workbook)


FLEET_ROW = re.compile(r"^Ship: Vessel \d+ \| Home port: \w+ \| Tonnage: \d+ \| Cargo: [\w ]+$")


def test_ingested_tables_keep_headers_in_every_chunk_and_bad_files_fail_alone(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "fleet.xlsx").write_bytes(fleet_xlsx(60))
    (docs / "plan.pptx").write_bytes(make_pptx())
    (docs / "ports.csv").write_bytes(b"Port;Depth\nOslo;12\n")
    (docs / "broken.xlsx").write_bytes(b"PK\x03\x04 not really a workbook")
    (docs / "notes.md").write_bytes(b"# Notes\n\nThe keeper logs every ship.")
    report = Ingestor(kb, ChunkerConfig(chunk_tokens=64, overlap_tokens=8)).ingest_paths([docs], "c")

    by_name = {Path(r.path).name: r for r in report.results}
    assert by_name["broken.xlsx"].status == "failed"
    assert "not a valid XLSX file" in by_name["broken.xlsx"].reason
    for name in ("fleet.xlsx", "plan.pptx", "ports.csv", "notes.md"):
        assert by_name[name].status == "added", by_name[name]
    documents = {d.title: d for d in kb.list_documents("c")}
    assert set(documents) == {"fleet", "Harbour plan", "ports", "Notes"}

    chunks = kb.get_chunks(documents["fleet"].id)
    fleet = [c for c in chunks if c.heading_path == "Fleet"]
    assert len(fleet) > 3  # the big table was split ...
    rows = set()
    for chunk in fleet:  # ... at rows, each of which still names its columns
        lines = chunk.text.removeprefix("# Fleet\n\n").split("\n")
        assert all(FLEET_ROW.match(line) for line in lines), chunk.text
        rows.update(lines)
    assert len(rows) == 60
    [crew] = [c for c in chunks if c.heading_path == "船员"]  # the small table stays whole
    assert crew.text == "# 船员\n\n姓名: 张伟 | 职务: 船长\n姓名: 李娜 | 职务: 大副"

    slides = kb.get_chunks(documents["Harbour plan"].id)
    assert [c.heading_path for c in slides] == ["Slide 1: Harbour plan", "Slide 2"]
    assert "Notes: Mention the 2019 storm." in slides[0].text

    [hit, *_] = kb.search("saffron", "c", 3, mode="lexical")
    assert "Ship: Vessel 37 | Home port: Hamburg | Tonnage: 2369 | Cargo: saffron" in hit.text
    [hit, *_] = kb.search("Which ship carries saffron?", "c", 3)
    assert hit.document_id == documents["fleet"].id and "saffron" in hit.text
