"""Loaders: read a file into one or more documents (text, title, pages), or fail with a reason the user
can act on.

Text formats are decoded as UTF-8 when they are, otherwise their encoding is detected. HTML keeps the main
content and DOCX its headings and tables, both rendered as Markdown so the chunker sees their structure.
PDF keeps one text part per page, so chunks know their page; pages without a text layer (scans) are OCR'd,
and images are documents of their OCR'd text (both by `ingest.ocr`). JSON / JSON Lines give a document per
record (a configurable text field) and SQuAD-format JSON a document per paragraph (or article), titled by
article.
Spreadsheets (XLSX, CSV) and slides (PPTX) are read by `ingest.office`.
"""

from __future__ import annotations

import codecs
import io
import json
import logging
import re
import stat
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingest.config import IngestConfig

# pypdf reports every recoverable defect of a PDF as a warning on the root logger; a damaged file
# either still gives text or fails with a LoadError, so those warnings are noise in the ingest output.
logging.getLogger("pypdf").setLevel(logging.ERROR)

SAMPLE = 8192


class LoadError(ValueError):
    """A file that cannot be ingested; the message says why."""


@dataclass(frozen=True)
class LoadedDocument:
    title: str
    file_type: str
    parts: tuple[str, ...]  # the text; for paged formats one part per page, numbered from 1
    paged: bool = False
    key: str = ""  # tells apart the documents of one file ("" for a file that is one document)


@dataclass(frozen=True)
class LoadedFile:
    documents: list[LoadedDocument]
    note: str = ""  # what was left out, e.g. records without the text field


Loader = Callable[[Path, bytes, IngestConfig], LoadedFile]


def display_name(path: Path) -> str:
    """A path as text that can be stored and shown: bytes that are not valid in the file system's encoding
    (Python keeps them as lone surrogates) are written as backslash escapes."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def file_stem(path: Path) -> str:
    return display_name(Path(path.stem))


# -- text decoding --------------------------------------------------------------------------------------

BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


LATIN_CODE_PAGES = {
    "cp1250", "cp1252", "cp1254", "cp1257", "latin_1", "iso8859_2", "iso8859_3", "iso8859_4", "iso8859_9",
    "iso8859_10", "iso8859_13", "iso8859_14", "iso8859_15", "iso8859_16", "mac_roman", "mac_latin2",
    "mac_iceland", "mac_turkish", "cp437", "cp850", "cp852", "cp858",
}  # fmt: skip


def decode_text(raw: bytes) -> str:
    """Text from bytes: a BOM's encoding, else UTF-8, else the encoding charset-normalizer detects; binary
    content (NUL bytes, control characters) is refused rather than decoded into garbage."""
    for bom, encoding in BOMS:
        if raw.startswith(bom):
            try:
                return _checked(raw[len(bom) :].decode(encoding))
            except UnicodeDecodeError as error:
                raise LoadError(
                    f"starts with a {encoding} byte-order mark but is not {encoding} text"
                ) from error
    if b"\x00" in raw[:SAMPLE]:
        raise LoadError("binary content (NUL bytes), not a text file")
    try:
        return _checked(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        utf8_error = error
    from charset_normalizer import from_bytes

    best = from_bytes(raw).best()
    if best is None:
        raise LoadError(
            f"not valid UTF-8 (byte {utf8_error.start}) and no other text encoding fits: binary content?"
        )
    # On short text the detector cannot tell the Latin-script code pages apart; Windows-1252 is the most
    # common of them (and a superset of Latin-1's printable characters), so it wins whenever it fits.
    if best.encoding in LATIN_CODE_PAGES:
        try:
            return _checked(raw.decode("cp1252"))
        except UnicodeDecodeError:
            pass
    return _checked(str(best))


def _checked(text: str) -> str:
    sample = text[:SAMPLE]
    control = sum(1 for ch in sample if ord(ch) < 32 and ch not in "\n\r\t\f")
    if sample and control / len(sample) > 0.05:
        raise LoadError("binary content (control characters), not a text file")
    return text


# -- plain text and Markdown ----------------------------------------------------------------------------

MARKDOWN_TITLE = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
TITLE_LINES = 5
MAX_TITLE_CHARS = 120


def load_text(path: Path, raw: bytes, config: IngestConfig) -> LoadedFile:
    return _single(file_stem(path), "txt", decode_text(raw))


def load_markdown(path: Path, raw: bytes, config: IngestConfig) -> LoadedFile:
    text = decode_text(raw)
    return _single(markdown_title(text) or file_stem(path), "md", text)


def markdown_title(text: str) -> str:
    """A heading among the first lines, else a short first line: scraped "Markdown" often has its title as
    plain text and `# comment` lines of unfenced code further down, which are no title."""
    lines = [line.strip() for line in text.split("\n", 200)[:200] if line.strip()][:TITLE_LINES]
    for line in lines:
        heading = MARKDOWN_TITLE.match(line)
        if heading:
            return heading.group(1)
    if lines and len(lines[0]) <= MAX_TITLE_CHARS and not lines[0].startswith(("```", "~~~", "|", "<")):
        return lines[0].lstrip("#*> ").strip()
    return ""


def _single(title: str, file_type: str, text: str) -> LoadedFile:
    return LoadedFile([LoadedDocument(title=title, file_type=file_type, parts=(text,))])


# -- HTML -----------------------------------------------------------------------------------------------

# Page furniture around the main content.
HTML_DROP = (
    "script, style, noscript, template, svg, canvas, iframe, form, button, select, nav, header, footer, "
    "aside, [role=navigation], [role=banner], [role=contentinfo], [role=complementary], [aria-hidden=true], "
    "[hidden]"
)
FURNITURE = re.compile(
    r"(^|[\s_-])(nav|navbar|menu|breadcrumbs?|sidebar|footer|cookie|banner|share|social|related|"
    r"comments?|advert|ads|promo|subscribe|newsletter)($|[\s_-])",
    re.IGNORECASE,
)
BLOCK_TAGS = {
    "p", "div", "section", "article", "main", "blockquote", "ul", "ol", "dl", "dt", "dd", "figure",
    "figcaption", "address", "details", "summary", "body", "html", "center",
}  # fmt: skip
HEADING_TAGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}


def load_html(path: Path, raw: bytes, config: IngestConfig) -> LoadedFile:
    from selectolax.lexbor import LexborHTMLParser

    tree = LexborHTMLParser(decode_text(raw))
    title_node = tree.css_first("title")
    title = title_node.text(strip=True) if title_node is not None else ""
    for node in tree.css(HTML_DROP):
        node.decompose()
    for node in tree.css("[class], [id]"):
        label = f"{node.attributes.get('class') or ''} {node.attributes.get('id') or ''}"
        if node.tag not in ("body", "html", "main", "article") and FURNITURE.search(label):
            node.decompose()
    root = _main_content(tree)
    if root is None:
        raise LoadError("HTML without a body")
    blocks: list[str] = []
    _render(root, blocks)
    text = "\n\n".join(block for block in blocks if block.strip())
    return _single(title or markdown_title(text) or file_stem(path), "html", text)


def _main_content(tree: Any) -> Any:
    """The largest <main> / <article> / [role=main] when the page marks its content, else the body."""
    marked = tree.css("main, article, [role=main]")
    if marked:
        return max(marked, key=lambda node: len(node.text(strip=True)))
    return tree.body


def _render(node: Any, blocks: list[str]) -> None:
    """Append the Markdown blocks of `node`'s subtree: headings, paragraphs, list items, code, tables."""
    inline: list[str] = []

    def flush() -> None:
        text = re.sub(r" *\n *", "\n", re.sub(r"[^\S\n]+", " ", "".join(inline))).strip()
        if text:
            blocks.append(text)
        inline.clear()

    child = node.child
    while child is not None:
        tag = child.tag
        if tag == "-text":
            inline.append(child.text_content or "")
        elif tag in HEADING_TAGS:
            flush()
            blocks.append("#" * HEADING_TAGS[tag] + " " + child.text(separator=" ", strip=True))
        elif tag == "pre":
            flush()
            blocks.append("```\n" + child.text(strip=False).strip("\n") + "\n```")
        elif tag == "table":
            flush()
            blocks.append(_table(child))
        elif tag in ("ul", "ol"):
            flush()
            items = []
            for item in child.iter():
                parts: list[str] = []
                _render(item, parts)
                if parts:
                    items.append("- " + "\n  ".join(parts))
            blocks.append("\n".join(items))
        elif tag == "br":
            inline.append("\n")
        elif tag == "li":  # outside a list
            flush()
            _render(child, blocks)
        elif tag in BLOCK_TAGS:
            flush()
            _render(child, blocks)
        else:
            inline.append(child.text(separator="", strip=False))
        child = child.next
    flush()


def _table(table: Any) -> str:
    rows = []
    for row in table.css("tr"):
        cells = [re.sub(r"\s+", " ", cell.text(separator=" ")).strip() for cell in row.css("th, td")]
        if any(cells):
            rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


# -- PDF ------------------------------------------------------------------------------------------------


PDF_LOCKED = "encrypted PDF (password protected): save it without a password to ingest it"


def load_pdf(path: Path, raw: bytes, config: IngestConfig) -> LoadedFile:
    from pypdf.errors import FileNotDecryptedError, PdfReadError

    reader = _open_pdf(raw)
    try:
        pages = tuple(_page_text(page) for page in reader.pages)
        metadata_title = reader.metadata.title if reader.metadata else None
    except FileNotDecryptedError as error:
        raise LoadError(PDF_LOCKED) from error
    except (PdfReadError, ValueError, KeyError, TypeError) as error:
        raise LoadError(f"damaged PDF ({type(error).__name__}: {error})") from error
    if not pages:
        raise LoadError("PDF without pages")
    pages, note = _ocr_scanned(reader, pages, config)
    if not any(page.strip() for page in pages):
        raise LoadError(f"PDF without a text layer ({len(pages)} page(s)), and no text in its images")
    title = str(metadata_title).strip() if metadata_title else ""
    return LoadedFile([LoadedDocument(title or file_stem(path), "pdf", pages, paged=True)], note)


def _ocr_scanned(reader: Any, pages: tuple[str, ...], config: IngestConfig) -> tuple[tuple[str, ...], str]:
    """`pages` with those that have no text layer OCR'd from their images. When OCR cannot run (no
    Tesseract, a damaged or oversized image) a PDF with text on other pages keeps those, with a note."""
    from ingest.ocr import pdf_page_text, tesseract

    scanned = [number for number, text in enumerate(pages) if not text.strip()]
    if not scanned:
        return pages, ""
    texts = list(pages)
    try:
        tesseract()
        for number in scanned:
            try:
                texts[number] = pdf_page_text(reader.pages[number], config)
            except LoadError as error:
                raise LoadError(f"page {number + 1}: {error}") from error
    except LoadError as error:
        if len(scanned) < len(pages):
            return pages, f"{len(scanned)} page(s) without a text layer left out: {error}"
        raise LoadError(f"PDF without a text layer ({len(pages)} page(s) of images?): {error}") from error
    return tuple(texts), ""


def _open_pdf(raw: bytes) -> Any:
    """A PdfReader, decrypted when the PDF is encrypted without a user password (print/copy restrictions)."""
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, PdfReadError

    try:
        reader = PdfReader(io.BytesIO(raw))
        if reader.is_encrypted and not reader.decrypt(""):
            raise LoadError(PDF_LOCKED)
    except DependencyError as error:
        raise LoadError(
            "encrypted PDF whose cipher needs the `cryptography` package: install it, or save the PDF "
            "without encryption"
        ) from error
    except (PdfReadError, ValueError, KeyError, TypeError) as error:
        if isinstance(error, LoadError):
            raise
        raise LoadError(f"not a readable PDF ({type(error).__name__}: {error})") from error
    return reader


def _page_text(page: Any) -> str:
    # One page that cannot be decoded (odd fonts, broken content streams) must not sink the whole file.
    try:
        return str(page.extract_text() or "")
    except Exception:
        return ""


# -- DOCX -----------------------------------------------------------------------------------------------

MAX_UNZIPPED_RATIO = 100  # Office files compress text ~10x; far above that is a zip bomb


def load_docx(path: Path, raw: bytes, config: IngestConfig) -> LoadedFile:
    import docx
    from docx.table import Table

    check_archive(raw, config.max_file_bytes, "DOCX")
    try:
        document = docx.Document(io.BytesIO(raw))
    except (zipfile.BadZipFile, KeyError, ValueError) as error:
        raise LoadError(f"not a valid DOCX file ({type(error).__name__}: {error})") from error
    blocks: list[str] = []
    for item in document.iter_inner_content():
        if isinstance(item, Table):
            rows = ["| " + " | ".join(cell.text.strip() for cell in row.cells) + " |" for row in item.rows]
            blocks.append("\n".join(rows))
            continue
        text = item.text.strip()
        if not text:
            continue
        style = item.style.name if item.style is not None else ""
        level = _heading_level(style or "")
        if level:
            blocks.append("#" * level + " " + text)
        elif "List" in (style or ""):
            blocks.append("- " + text)
        else:
            blocks.append(text)
    text = "\n\n".join(blocks)
    title = (document.core_properties.title or "").strip()
    return _single(title or markdown_title(text) or file_stem(path), "docx", text)


def _heading_level(style: str) -> int:
    if style == "Title":
        return 1
    match = re.fullmatch(r"Heading (\d)", style)
    return min(int(match.group(1)), 6) if match else 0


def check_archive(raw: bytes, max_bytes: int, kind: str) -> None:
    """Refuse an Office file (`kind`: DOCX, XLSX, ...) that is no ZIP container, or one that would unpack to
    far more than it weighs (a zip bomb), before any member is decompressed."""
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            unpacked = sum(member.file_size for member in archive.infolist())
    except zipfile.BadZipFile as error:
        raise LoadError(f"not a valid {kind} file (not a ZIP container)") from error
    if unpacked > max(max_bytes, MAX_UNZIPPED_RATIO * len(raw)):
        raise LoadError(
            f"refused: unpacks to {unpacked} bytes from {len(raw)} (a zip bomb, or far over the size limit)"
        )


# -- JSON, JSON Lines, SQuAD ----------------------------------------------------------------------------


def load_json(path: Path, raw: bytes, config: IngestConfig) -> LoadedFile:
    try:
        data = json.loads(decode_text(raw))
    except json.JSONDecodeError as error:
        raise LoadError(f"invalid JSON: {error}") from error
    if _is_squad(data):
        return _squad(data, config)
    records = data if isinstance(data, list) else [data]
    return _records(
        path, "json", ((str(i), record) for i, record in enumerate(records)), config, len(records)
    )


def load_jsonl(path: Path, raw: bytes, config: IngestConfig) -> LoadedFile:
    lines = decode_text(raw).splitlines()
    bad: list[int] = []

    def records() -> Iterator[tuple[str, Any]]:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                yield str(number), json.loads(line)
            except json.JSONDecodeError:
                bad.append(number)

    loaded = _records(path, "jsonl", records(), config, len(lines))
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
        note = f"{len(bad)} line(s) of invalid JSON left out (line {shown})"
        return LoadedFile(loaded.documents, "; ".join(filter(None, [note, loaded.note])))
    return loaded


def _records(
    path: Path, file_type: str, records: Iterator[tuple[str, Any]], config: IngestConfig, total: int
) -> LoadedFile:
    single = total == 1
    documents = []
    missing = 0
    for key, record in records:
        text = record if isinstance(record, str) else _field(record, config.json_text_field)
        if not isinstance(text, str) or not text.strip():
            missing += 1
            continue
        title = _field(record, config.json_title_field)
        name = str(title).strip() if isinstance(title, str | int | float) and str(title).strip() else ""
        title = name or (file_stem(path) if single else f"{file_stem(path)} #{key}")
        documents.append(LoadedDocument(title, file_type, (text,), key="" if single else key))
    if not documents:
        raise LoadError(
            f"no record has a text field {config.json_text_field!r} "
            "(set ARCHIVIST_JSON_TEXT_FIELD to the field that holds the text)"
        )
    note = f"{missing} record(s) without a text field {config.json_text_field!r} left out" if missing else ""
    return LoadedFile(documents, note)


def _field(record: Any, dotted: str) -> Any:
    for name in dotted.split("."):
        if not isinstance(record, dict):
            return None
        record = record.get(name)
    return record


def _is_squad(data: Any) -> bool:
    if not isinstance(data, dict) or not isinstance(data.get("data"), list) or not data["data"]:
        return False
    first = data["data"][0]
    return isinstance(first, dict) and isinstance(first.get("paragraphs"), list)


def _squad(data: dict[str, Any], config: IngestConfig) -> LoadedFile:
    documents = []
    for a, article in enumerate(data["data"]):
        title = str(article.get("title", f"article {a}")).replace("_", " ")
        contexts = [p.get("context", "") for p in article.get("paragraphs", []) if isinstance(p, dict)]
        if config.squad_unit == "article":
            documents.append(LoadedDocument(title, "squad", ("\n\n".join(contexts),), key=str(a)))
        else:
            documents.extend(
                LoadedDocument(title, "squad", (context,), key=f"{a}.{p}")
                for p, context in enumerate(contexts)
            )
    return LoadedFile([d for d in documents if d.parts[0].strip()])


# -- dispatch -------------------------------------------------------------------------------------------


def load_office(path: Path, raw: bytes, config: IngestConfig) -> LoadedFile:
    # Imported on first use: ingest.office builds on this module, and openpyxl / python-pptx are heavy.
    from ingest.office import load_office_file

    return load_office_file(path, raw, config)


def load_image(path: Path, raw: bytes, config: IngestConfig) -> LoadedFile:
    # Imported on first use, like ingest.office: ingest.ocr builds on this module.
    from ingest.ocr import load_image_file

    return load_image_file(path, raw, config)


LOADERS: dict[str, Loader] = {
    ".txt": load_text,
    ".text": load_text,
    ".md": load_markdown,
    ".markdown": load_markdown,
    ".html": load_html,
    ".htm": load_html,
    ".xhtml": load_html,
    ".pdf": load_pdf,
    ".docx": load_docx,
    ".xlsx": load_office,
    ".xlsm": load_office,
    ".csv": load_office,
    ".tsv": load_office,
    ".pptx": load_office,
    ".json": load_json,
    ".jsonl": load_jsonl,
    ".ndjson": load_jsonl,
    **dict.fromkeys((".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"), load_image),
}


def is_supported(path: Path) -> bool:
    return path.suffix.lower() in LOADERS


def load_file(path: Path, raw: bytes, config: IngestConfig) -> LoadedFile:
    """Load the bytes of one file (already read and hashed by the caller) by its extension."""
    loader = LOADERS.get(path.suffix.lower())
    if loader is None:
        supported = ", ".join(sorted(LOADERS))
        raise LoadError(f"unsupported file type {path.suffix or '(none)'!r} (supported: {supported})")
    return loader(path, raw, config)


def read_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of a file, refusing one over `max_bytes` from its size alone, before reading any of it."""
    status = path.stat()
    if not stat.S_ISREG(status.st_mode):
        raise LoadError("not a regular file (a device, socket or pipe)")
    if status.st_size > max_bytes:
        raise LoadError(
            f"{status.st_size} bytes is over the {max_bytes} byte limit (ARCHIVIST_MAX_FILE_BYTES)"
        )
    with path.open("rb") as handle:
        raw = handle.read(max_bytes + 1)  # the file may have grown since the stat
    if len(raw) > max_bytes:
        raise LoadError(f"over the {max_bytes} byte limit (ARCHIVIST_MAX_FILE_BYTES)")
    return raw
