"""Office loaders: spreadsheets (XLSX, CSV) and slides (PPTX), rendered as Markdown sections.

Each sheet (a CSV file: one section named after the file) and each slide ("Slide N: title") opens with a
heading, so a chunk never mixes two of them and its heading path says where it comes from. A table is one
block of lines, a line per row written with its column headers ("Name: Ada | Year: 1843"): the chunker keeps
the block whole when it fits and otherwise cuts it at lines, so every piece of a large table still says
what its columns are. Empty rows and columns are left out; numbers and dates are written as a person would
(12, not 12.0; ISO dates); formulas are read as the values Excel last computed.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ingest.config import IngestConfig
from ingest.loaders import LoadedDocument, LoadedFile, LoadError, check_archive, decode_text, file_stem

# Errors the parsers raise on a damaged file: a bad ZIP, a missing part (openpyxl: an OSError), malformed
# XML (ElementTree's and lxml's parse errors are SyntaxErrors), values of the wrong kind.
DAMAGED = (
    zipfile.BadZipFile, OSError, KeyError, ValueError, TypeError, IndexError, AttributeError, SyntaxError
)  # fmt: skip
OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # legacy .xls/.ppt, and every password-protected OOXML file
WHITESPACE = re.compile(r"\s+")
# A cell's text must not turn its line into Markdown structure (a heading, a code fence).
MARKDOWN_START = re.compile(r"^([ \t]*)(#|`{3}|~{3})", re.MULTILINE)
CSV_DELIMITERS = ",;\t"
CSV_SAMPLE_LINES = 50


def load_office_file(path: Path, raw: bytes, config: IngestConfig) -> LoadedFile:
    """Load a spreadsheet or a presentation by its extension (the loaders registered in `ingest.loaders`)."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return load_csv(path, raw)
    kind = "PPTX" if suffix == ".pptx" else "XLSX"
    _check_container(raw, config, kind)
    try:
        return load_pptx(path, raw) if kind == "PPTX" else load_xlsx(path, raw)
    except LoadError:  # a ValueError too, but already the reason to give
        raise
    except DAMAGED as error:
        raise LoadError(f"not a valid {kind} file ({type(error).__name__}: {error})") from error


def _check_container(raw: bytes, config: IngestConfig, kind: str) -> None:
    if raw.startswith(OLE_MAGIC):
        raise LoadError(
            f"password-protected (encrypted) or legacy-format {kind} file: save it without a password, "
            f"as .{kind.lower()}, to ingest it"
        )
    check_archive(raw, config.max_file_bytes, kind)


# -- tables ---------------------------------------------------------------------------------------------


def render_table(rows: Iterable[list[str]]) -> str:
    """A table as lines of "header: value" pairs, one line per row, without empty rows and columns. Leading
    rows with a single filled cell (a caption above the table) are kept as plain lines; the next row is the
    header. A header cell left empty is named after its column."""
    table = [row for row in rows if any(row)]
    width = max((len(row) for row in table), default=0)
    table = [row + [""] * (width - len(row)) for row in table]
    filled = [c for c in range(width) if any(row[c] for row in table)]
    table = [[row[c] for c in filled] for row in table]
    captions = 0
    while len(filled) > 1 and captions < len(table) - 1 and sum(map(bool, table[captions])) == 1:
        captions += 1
    lines = [_literal(next(cell for cell in row if cell)) for row in table[:captions]]
    if captions < len(table):
        header = [cell or f"Column {n}" for n, cell in enumerate(table[captions], 1)]
        body = table[captions + 1 :]
        lines += [_row(header, row) for row in body] or [_literal(" | ".join(header))]
    return "\n".join(lines)


def _row(header: list[str], row: list[str]) -> str:
    return _literal(" | ".join(f"{name}: {value}" for name, value in zip(header, row, strict=True) if value))


def _literal(text: str) -> str:
    return MARKDOWN_START.sub(r"\1\\\2", text)


def _cell_text(text: str) -> str:
    return WHITESPACE.sub(" ", text).strip()


def _section(heading: str, blocks: Iterable[str]) -> str:
    return "\n\n".join([f"# {_cell_text(heading)}", *(block for block in blocks if block)])


def _document(title: str, file_type: str, sections: list[str], what: str) -> LoadedFile:
    if not sections:
        raise LoadError(f"{what} without any text")
    return LoadedFile([LoadedDocument(title, file_type, ("\n\n".join(sections),))])


# -- XLSX -----------------------------------------------------------------------------------------------


def load_xlsx(path: Path, raw: bytes) -> LoadedFile:
    """Each worksheet with a value in it is a section; formulas give their cached values."""
    import openpyxl

    workbook = openpyxl.load_workbook(io.BytesIO(raw), read_only=True, data_only=True)
    try:
        sections = []
        for sheet in workbook.worksheets:
            sheet.reset_dimensions()  # some writers store wrong dimensions; read every row there is
            table = render_table([_cell_value(cell) for cell in row] for row in sheet.iter_rows())
            if table:
                sections.append(_section(sheet.title, [table]))
        title = (workbook.properties.title or "").strip()
    finally:
        workbook.close()
    return _document(title or file_stem(path), "xlsx", sections, "workbook")


def _cell_value(cell: Any) -> str:
    value = cell.value
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float) and "%" in (getattr(cell, "number_format", None) or ""):
        return _number(value * 100) + "%"
    if isinstance(value, int | float):
        return _number(value)
    if isinstance(value, dt.datetime):
        if value.time() == dt.time():
            return value.date().isoformat()
        return value.isoformat(sep=" ", timespec="seconds")
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return "" if value is None else _cell_text(str(value))


def _number(value: float) -> str:
    """12 for 12.0, 0.3 for 0.30000000000000004: at most 15 significant digits, as Excel shows them."""
    if isinstance(value, int) or value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.15g}"


# -- CSV ------------------------------------------------------------------------------------------------


def load_csv(path: Path, raw: bytes) -> LoadedFile:
    """One section named after the file; the delimiter (comma, semicolon or tab) is found from the rows."""
    text = decode_text(raw)
    delimiter = sniff_delimiter(text)
    try:
        table = render_table(
            [_cell_text(cell) for cell in row] for row in csv.reader(io.StringIO(text), delimiter=delimiter)
        )
    except csv.Error as error:
        raise LoadError(f"malformed CSV ({error})") from error
    name = file_stem(path)
    sections = [_section(name, [table])] if table else []
    return _document(name, "csv", sections, "CSV file")


def sniff_delimiter(text: str) -> str:
    """The delimiter that splits the first rows into the same number of fields (more than one), most
    consistently; a comma when none does."""
    sample = text.splitlines()[:CSV_SAMPLE_LINES]

    def fit(delimiter: str) -> tuple[bool, float, int]:
        try:
            widths = [len(row) for row in csv.reader(sample, delimiter=delimiter) if row]
        except csv.Error:
            return (False, 0.0, 0)
        if not widths:
            return (False, 0.0, 0)
        common = max(set(widths), key=widths.count)
        return (common > 1, widths.count(common) / len(widths), common)

    best = max(CSV_DELIMITERS, key=fit)
    return best if fit(best)[0] else ","


# -- PPTX -----------------------------------------------------------------------------------------------


def load_pptx(path: Path, raw: bytes) -> LoadedFile:
    """A section per slide: its title as heading, its shapes' text in reading order, then its notes."""
    import pptx

    presentation = pptx.Presentation(io.BytesIO(raw))
    sections = []
    first_title = ""
    for number, slide in enumerate(presentation.slides, 1):
        title_shape = slide.shapes.title
        title = _cell_text(title_shape.text_frame.text) if title_shape is not None else ""
        first_title = first_title or title
        blocks = list(_shape_blocks(shape for shape in slide.shapes if shape != title_shape))
        blocks.append(_notes(slide))
        if title or any(blocks):
            sections.append(_section(f"Slide {number}: {title}" if title else f"Slide {number}", blocks))
    title = (presentation.core_properties.title or "").strip()
    return _document(title or first_title or file_stem(path), "pptx", sections, "presentation")


def _shape_blocks(shapes: Iterable[Any]) -> Iterator[str]:
    """The text of shapes top to bottom, then left to right; a group's shapes in their own order."""
    from pptx.enum.shapes import MSO_SHAPE_TYPE

    for shape in sorted(shapes, key=lambda s: (s.top or 0, s.left or 0)):
        if shape.shape_type == MSO_SHAPE_TYPE.GROUP:
            yield from _shape_blocks(shape.shapes)
        elif shape.has_table:
            yield render_table([_cell_text(cell.text) for cell in row.cells] for row in shape.table.rows)
        elif shape.has_text_frame:
            yield _text_frame(shape.text_frame)


def _notes(slide: Any) -> str:
    frame = slide.notes_slide.notes_text_frame if slide.has_notes_slide else None
    notes = _text_frame(frame) if frame is not None else ""
    return f"Notes: {notes}" if notes else ""


def _text_frame(frame: Any) -> str:
    # python-pptx writes a line break inside a paragraph as a vertical tab, which cleaning would delete.
    lines = (line.strip() for p in frame.paragraphs for line in p.text.split("\v"))
    return _literal("\n".join(line for line in lines if line))
