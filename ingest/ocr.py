"""OCR: text from images with Tesseract (Debian `tesseract-ocr` + language packages), run as a subprocess.

Owns the image loader (PNG, JPEG, TIFF, BMP, WebP: a document per file, a page per TIFF frame), the text
of PDF pages that have no text layer (their embedded images, which is what a scan is), the pixel limit that
refuses an image from its header before it is decoded, and the removal of the spaces Tesseract writes
between CJK characters, so OCR'd Chinese reads and is chunked like any Chinese document.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ingest.config import IngestConfig
from ingest.loaders import LoadedDocument, LoadedFile, LoadError, file_stem

IMAGE_TYPES = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".tif": "tiff", ".tiff": "tiff",
               ".bmp": "bmp", ".webp": "webp"}  # fmt: skip
PIL_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "WEBP")
INSTALL = "apt-get install tesseract-ocr tesseract-ocr-eng tesseract-ocr-chi-sim"
PAGE_SECONDS = 300  # Tesseract on one page; far above the ~1-3 s a scanned page takes
DEFAULT_DPI = 300  # what scans are made at; Tesseract's own guess for an image without one is 70

# Ideographs, kana, CJK punctuation and full-width forms: Tesseract's CJK models put a space between
# every two of them. Hangul is left alone, since Korean is written with spaces.
CJK = r"[\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]"
CJK_SPACE = re.compile(rf"(?<={CJK})[ \t]+(?={CJK})")


def join_cjk(text: str) -> str:
    """`text` without the spaces (not line breaks) between two CJK characters."""
    return CJK_SPACE.sub("", text)


def tesseract() -> str:
    """The tesseract executable, or a LoadError saying how to install it."""
    found = shutil.which("tesseract")
    if found is None:
        raise LoadError(f"OCR needs Tesseract, which is not installed: {INSTALL}")
    return found


def ocr(image: Any, config: IngestConfig) -> str:
    """The text of one PIL image, in the languages of `config.ocr_languages`."""
    if image.mode not in ("1", "L", "RGB"):
        flat = image.convert("RGBA")
        image = _white_page(flat.size)
        image.paste(flat, mask=flat.getchannel("A"))  # transparent means paper, not black
    dpi = image.info.get("dpi", (0, 0))[0]
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)
    command = [
        tesseract(),
        "stdin",
        "stdout",
        "-l",
        config.ocr_languages,
        "--dpi",
        str(round(dpi or DEFAULT_DPI)),
    ]
    # One thread per call: the pipeline OCRs files in parallel already, and Tesseract's OpenMP threads
    # make a page 3-4x slower on a busy 2-core machine.
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
    try:
        done = subprocess.run(
            command, input=buffer.getvalue(), capture_output=True, env=env, timeout=PAGE_SECONDS
        )
    except subprocess.TimeoutExpired as error:
        raise LoadError(f"OCR took over {PAGE_SECONDS} s on one page") from error
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip()
        if "Failed loading language" in message:
            raise LoadError(
                f"Tesseract lacks a language of ARCHIVIST_OCR_LANGUAGES={config.ocr_languages!r}: "
                "install its package (tesseract-ocr-eng, tesseract-ocr-chi-sim, ...) or change the setting; "
                + message.splitlines()[0]
            )
        raise LoadError(f"OCR failed: {message.splitlines()[-1] if message else f'exit {done.returncode}'}")
    return join_cjk(done.stdout.decode("utf-8", "replace")).strip()


def _white_page(size: tuple[int, int]) -> Any:
    from PIL import Image

    return Image.new("RGB", size, "white")


def check_pixels(width: int, height: int, config: IngestConfig) -> None:
    if width * height > config.ocr_max_pixels:
        raise LoadError(
            f"refused: a {width}x{height} image is over the {config.ocr_max_pixels} pixel limit "
            "(ARCHIVIST_OCR_MAX_PIXELS)"
        )


# -- image files ----------------------------------------------------------------------------------------


def load_image_file(path: Path, raw: bytes, config: IngestConfig) -> LoadedFile:
    """An image file as one document of its OCR'd text; a multi-page TIFF gives a page per frame."""
    tesseract()
    pages = tuple(ocr(frame, config) for frame in _frames(raw, config))
    if not any(pages):
        raise LoadError("no text found in the image")
    file_type = IMAGE_TYPES[path.suffix.lower()]
    return LoadedFile([LoadedDocument(file_stem(path), file_type, pages, paged=len(pages) > 1)])


def _frames(raw: bytes, config: IngestConfig) -> Iterator[Any]:
    from PIL import Image, UnidentifiedImageError

    # Pillow's decompression-bomb guard, at our limit and raised as an error (it warns up to twice its
    # value): it refuses the image from its header, in `open`. Later frames of a TIFF are checked here.
    Image.MAX_IMAGE_PIXELS = config.ocr_max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw), formats=PIL_FORMATS) as image:  # reads the header only
                for index in range(getattr(image, "n_frames", 1)):
                    image.seek(index)
                    check_pixels(image.width, image.height, config)
                    image.load()
                    yield image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise LoadError(
            f"refused: over the {config.ocr_max_pixels} pixel limit (ARCHIVIST_OCR_MAX_PIXELS): {error}"
        ) from error
    except UnidentifiedImageError as error:
        raise LoadError(f"not a readable image ({error})") from error
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise LoadError(f"damaged image ({type(error).__name__}: {error})") from error


# -- scanned PDF pages ----------------------------------------------------------------------------------


def pdf_page_text(page: Any, config: IngestConfig) -> str:
    """The OCR'd text of the images of a PDF page (pypdf) that has no text layer; "" for a page without
    images. Every image is checked against the pixel limit from its dictionary before it is decoded."""
    texts = []
    for key in page.images.keys():
        path = [key] if isinstance(key, str) else key
        if path[0].startswith("~"):
            continue  # an inline image: small by nature, never the scan of a page
        try:
            check_pixels(*_image_size(page, path), config)
            image = page.images[key].image
        except LoadError:
            raise
        except Exception as error:  # pypdf's decoders raise anything on a damaged stream
            raise LoadError(f"damaged image ({type(error).__name__}: {error})") from error
        if image is not None:
            texts.append(ocr(image, config))
    return "\n\n".join(text for text in texts if text)


def _image_size(page: Any, path: list[str]) -> tuple[int, int]:
    image = page
    for name in path:  # an image inside a form XObject is named by the form's name, then its own
        image = image["/Resources"].get_object()["/XObject"].get_object()[name].get_object()
    return int(image["/Width"]), int(image["/Height"])
