"""OCR with the real Tesseract (Debian tesseract-ocr, -eng, -chi-sim) on documents these tests render: scanned
PDFs in English and Chinese (every page's text back within a 5 % character error rate, on its own page, and
retrievable), a mixed PDF (only the page without a text layer is OCR'd), images as documents, and bad images
that fail alone. Without Tesseract these skip, except in CI (`CI` set), where they must run."""

from __future__ import annotations

import os
import re
import shutil
import textwrap
import unicodedata
from pathlib import Path

import pytest

from ingest.config import ChunkerConfig, IngestConfig
from ingest.loaders import LoadError, is_supported, load_file
from ingest.ocr import CJK, join_cjk
from ingest.pipeline import Ingestor
from retriever.store import KnowledgeBase
from tests.conftest import SHARED_DATA
from tests.ingest.documents import NOTO_CJK, images_pdf, join_pdfs, make_pdf, png_header, scanned_page

MISSING = (
    "needs Tesseract with English and Chinese and the Noto CJK font (Debian: apt install tesseract-ocr "
    "tesseract-ocr-eng tesseract-ocr-chi-sim fonts-noto-cjk; `make test` does)"
)
MAX_CER = 0.05

ENGLISH = [
    "The lighthouse on Skerry Point was built in 1871 from granite quarried on the island. Its keeper "
    "climbed one hundred and twelve steps every evening to light the lamp, and wound the clockwork that "
    "turned the lens until dawn.",
    "Honey bees communicate the direction of a food source with a waggle dance. The angle of the dance "
    "against the vertical comb matches the angle between the sun and the flowers, and its length tells "
    "the distance.",
    "Mount Etna on Sicily is one of the most active volcanoes in the world. Its eruptions have been "
    "recorded for at least two thousand seven hundred years, and the town of Catania was rebuilt after "
    "the lava flow of 1669.",
    "Sourdough bread rises without baker's yeast. A starter of flour and water collects wild yeasts and "
    "lactic acid bacteria, which leaven the dough slowly and give the crumb its sour taste.",
    "The Rosetta Stone carries the same decree in hieroglyphs, demotic script and ancient Greek. Thomas "
    "Young and Jean-Francois Champollion used it to decipher Egyptian writing in the 1820s.",
    "Glaciers move because ice deforms under its own weight. A valley glacier in the Alps can flow a few "
    "hundred metres a year, carving the U-shaped valleys that remain when the ice retreats.",
    "The octopus has three hearts and blue blood. Two hearts pump blood through the gills while the third "
    "supplies the rest of the body, and copper-rich hemocyanin carries oxygen in the cold sea.",
    "Chess players use an opening called the Sicilian Defence more than any other reply to the king's "
    "pawn. Black gives up symmetry in the centre to fight for the initiative from the first move.",
    "The Great Wall of China was built and rebuilt over many dynasties. Most of the brick sections that "
    "visitors walk on today near Beijing date from the Ming dynasty in the sixteenth century.",
    "Penicillin was discovered by Alexander Fleming in 1928 when a mould contaminated a dish of bacteria. "
    "Howard Florey and Ernst Chain later turned it into a medicine produced at industrial scale.",
]
QUESTION = "How many hearts does an octopus have, and what colour is its blood?"  # page 7

CHINESE_INLINE = [
    "长城是中国古代的军事防御工程，修建的历史可以追溯到西周时期。明代重新修筑的长城东起山海关，西至嘉峪关。",
    "大熊猫主要生活在四川、陕西和甘肃的山区，以竹子为主要食物。一只成年大熊猫每天要花十多个小时进食。",
    "茶叶最早在中国被人们发现和利用。唐代陆羽写成了世界上第一部茶学专著《茶经》，记录了种茶和煮茶的方法。",
]


@pytest.fixture
def needs_ocr() -> None:
    """Skip without Tesseract (or its languages, or the font), except in CI (`CI` set): there OCR must run."""
    languages = ""
    if shutil.which("tesseract"):
        import subprocess

        languages = subprocess.run(["tesseract", "--list-langs"], capture_output=True, text=True).stdout
    if not (NOTO_CJK.exists() and {"eng", "chi_sim"} <= set(languages.split())):
        if os.environ.get("CI"):
            pytest.fail(f"{MISSING}; CI is set, so the OCR tests must not skip")
        pytest.skip(MISSING)


def wrapped(paragraph: str, width: int) -> list[str]:
    return (
        textwrap.wrap(paragraph, width)
        if " " in paragraph
        else textwrap.wrap(paragraph, width, break_on_hyphens=False)
    )


def normalized(text: str) -> str:
    """NFKC (full-width punctuation as ASCII), runs of whitespace as one space, and no space next to a CJK
    character, where Chinese has none but Tesseract writes one between Chinese and Latin ("AI 大模型")."""
    spaced = " ".join(unicodedata.normalize("NFKC", text).split())
    return re.sub(rf"(?<={CJK}) | (?={CJK})", "", spaced)


def cer(expected: str, found: str) -> float:
    """Character error rate: Levenshtein distance over the length of `expected`, whitespace-normalized."""
    a, b = normalized(expected), normalized(found)
    previous = list(range(len(b) + 1))
    for i, char in enumerate(a, 1):
        current = [i]
        for j, other in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char != other)))
        previous = current
    return previous[-1] / max(len(a), 1)


def chinese_pages(count: int) -> list[str]:
    """Pages of about 300 characters of real Chinese prose from ../shared/data/zh (Markdown marks left
    out), or of the inline paragraphs where that is absent."""
    notes = sorted((SHARED_DATA / "zh").glob("llm-notes-*.md"))
    paragraphs = CHINESE_INLINE * count
    if notes:
        text = "\n".join(note.read_text("utf-8") for note in notes)
        lines = [re.sub(r"[#*`>|\[\]-]", "", line).strip() for line in text.splitlines()]
        paragraphs = [line for line in lines if len(line) >= 40 and prose(line)]
    pages = [""]
    for paragraph in paragraphs:
        if len(pages[-1]) > 250:
            pages.append("")
        pages[-1] += paragraph[: 300 - len(pages[-1])]
    return pages[:count]


def prose(line: str) -> bool:
    """Mostly Chinese characters and no code (the notes hold code samples and lists of product names)."""
    return len(re.findall(CJK, line)) >= 0.8 * len(line) and not re.search(r"[{}()=_]", line)


def write(folder: Path, name: str, content: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(content)
    return folder / name


def check_pages(paragraphs: list[str], width: int) -> list[float]:
    pages = [wrapped(paragraph, width) for paragraph in paragraphs]
    loaded = load_file(Path("scan.pdf"), images_pdf([scanned_page(lines) for lines in pages]), IngestConfig())
    (document,) = loaded.documents
    assert document.paged and len(document.parts) == len(pages) and not loaded.note
    rates = [cer("\n".join(lines), text) for lines, text in zip(pages, document.parts, strict=True)]
    assert max(rates) <= MAX_CER, rates
    return rates


@pytest.mark.usefixtures("needs_ocr")
def test_an_english_scan_is_read_page_by_page() -> None:
    rates = check_pages(ENGLISH, 80)
    print(f"English CER per page: {[round(rate, 4) for rate in rates]}")  # noqa: T201


@pytest.mark.usefixtures("needs_ocr")
def test_a_chinese_scan_is_read_page_by_page_without_spaces_between_characters() -> None:
    rates = check_pages(chinese_pages(6), 40)
    print(f"Chinese CER per page: {[round(rate, 4) for rate in rates]}")  # noqa: T201


@pytest.mark.usefixtures("needs_ocr")
def test_a_scanned_pdf_is_ingested_and_its_pages_are_retrievable(kb: KnowledgeBase, tmp_path: Path) -> None:
    pdf = images_pdf([scanned_page(wrapped(paragraph, 80)) for paragraph in ENGLISH])
    path = write(tmp_path / "docs", "scanned-notes.pdf", pdf)
    # Chunks of about a page, so that where each starts says where its text is.
    chunker = ChunkerConfig(chunk_tokens=48, overlap_tokens=0)
    (result,) = Ingestor(kb, chunker, IngestConfig()).ingest_paths([path], "scans").results
    assert result.status == "added", result.reason
    hits = kb.search(QUESTION, "scans", top_k=3)
    assert hits[0].page == 7 and "three hearts" in hits[0].text


@pytest.mark.usefixtures("needs_ocr")
def test_only_the_page_without_a_text_layer_is_ocrd() -> None:
    text_layer = ["The ledger of the harbour master, 1902.", "Ships in port: twelve."]
    scan = ENGLISH[1]
    pdf = join_pdfs(make_pdf([text_layer]), images_pdf([scanned_page(wrapped(scan, 80))]))
    (document,) = load_file(Path("mixed.pdf"), pdf, IngestConfig()).documents
    assert document.parts[0] == make_pdf_text(pdf)  # untouched: the text layer itself, not OCR
    assert cer(scan, document.parts[1]) <= MAX_CER


def make_pdf_text(pdf: bytes) -> str:
    import io

    from pypdf import PdfReader

    return PdfReader(io.BytesIO(pdf)).pages[0].extract_text()


@pytest.mark.usefixtures("needs_ocr")
@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tiff", ".bmp", ".webp"])
def test_an_image_is_a_document_of_its_text(suffix: str, tmp_path: Path) -> None:
    assert is_supported(Path(f"photo{suffix.upper()}"))
    page = scanned_page(wrapped(ENGLISH[2], 80)).crop((0, 0, 1700, 500))
    path = tmp_path / f"etna{suffix}"
    page.save(path)
    (document,) = load_file(path, path.read_bytes(), IngestConfig()).documents
    assert document.title == "etna" and not document.paged
    assert cer(ENGLISH[2], document.parts[0]) <= MAX_CER


@pytest.mark.usefixtures("needs_ocr")
def test_bad_images_fail_alone_and_the_rest_is_ingested(kb: KnowledgeBase, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    write(docs, "good.md", b"# Good\n\nThe lighthouse keeper lit the lamp at dusk.")
    write(docs, "corrupt.png", png_header(800, 600)[:40] + b"not image data" * 50)
    write(docs, "bomb.png", png_header(20_000, 20_000))
    write(docs, "photo.jpg", b"\xff\xd8\xff\xe0 truncated")
    report = Ingestor(kb, ChunkerConfig(), IngestConfig()).ingest_paths([docs], "c")
    by_name = {Path(r.path).name: r for r in report.results}
    assert by_name["good.md"].status == "added"
    assert by_name["bomb.png"].status == "failed"
    assert "refused: over the 50000000 pixel limit" in by_name["bomb.png"].reason
    for name in ("corrupt.png", "photo.jpg"):
        assert by_name[name].status == "failed" and "image" in by_name[name].reason, by_name[name]


@pytest.mark.usefixtures("needs_ocr")
def test_a_pdf_image_over_the_pixel_limit_is_refused_before_decoding() -> None:
    pdf = images_pdf([scanned_page(["Nothing to read here."])])
    with pytest.raises(
        LoadError, match=r"page 1: refused: a 1700x2200 image is over the 1000000 pixel limit"
    ):
        load_file(Path("big.pdf"), pdf, IngestConfig(ocr_max_pixels=1_000_000))


def test_without_tesseract_a_scan_fails_clearly_and_a_mixed_pdf_keeps_its_text(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from PIL import Image

    monkeypatch.setenv("PATH", str(tmp_path))  # no tesseract on it
    blank = images_pdf([Image.new("L", (850, 1100), 255)])
    mixed = join_pdfs(make_pdf([["Kept text."]]), blank)
    with pytest.raises(LoadError, match="without a text layer .*install tesseract-ocr"):
        load_file(Path("scan.pdf"), blank, IngestConfig())
    with pytest.raises(LoadError, match="OCR needs Tesseract"):
        load_file(Path("photo.png"), png_header(10, 10), IngestConfig())
    loaded = load_file(Path("mixed.pdf"), mixed, IngestConfig())
    assert loaded.documents[0].parts == (make_pdf_text(mixed), "")
    assert "1 page(s) without a text layer left out" in loaded.note


def test_spaces_between_cjk_characters_are_removed_and_others_kept() -> None:
    assert join_cjk("大 模型 时 代 ， 使用 GPU 加速 。\n第 二 行 and English words") == (
        "大模型时代，使用 GPU 加速。\n第二行 and English words"
    )
