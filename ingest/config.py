"""Configuration of chunking and ingestion; built from the environment by `app.settings` only."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class ChunkerConfig:
    chunk_tokens: int = 200  # target size in embedder tokens; capped at the embedder's own limit
    overlap_tokens: int = 32

    def __post_init__(self) -> None:
        if self.chunk_tokens < 16:
            raise ValueError("chunk_tokens must be at least 16")
        if not 0 <= self.overlap_tokens < self.chunk_tokens // 2:
            raise ValueError("overlap_tokens must be >= 0 and less than half of chunk_tokens")


@dataclass(frozen=True)
class IngestConfig:
    # Files over this size are refused before a byte of them is read (the check is a stat).
    max_file_bytes: int = 50 * 1024 * 1024
    # JSON / JSON Lines records: dotted paths of the text and title fields ("body" or "meta.title").
    json_text_field: str = "text"
    json_title_field: str = "title"
    # SQuAD-format JSON: each paragraph a document (default), or each article one document.
    squad_unit: Literal["paragraph", "article"] = "paragraph"
    # Near-duplicate removal: estimated Jaccard similarity of word (or CJK character) 3-gram shingles
    # at or above which a document or chunk is dropped as a copy of an earlier one; 1.0 keeps only
    # exact-duplicate removal.
    dedup_threshold: float = 0.8
    # Chunks shorter than this (in shingles) are never dropped: short lines repeat legitimately.
    dedup_min_shingles: int = 24
    # Parsing runs in this many threads ahead of embedding; chunks are embedded (sorted by length) and
    # written in groups of about this many, one SQL transaction per group.
    workers: int = 2
    batch_chunks: int = 256
    # OCR of images and of PDF pages without a text layer: Tesseract language codes joined by "+" (each
    # needs its Debian package, tesseract-ocr-eng, tesseract-ocr-chi-sim, ...), the first one primary:
    # Chinese first reads Chinese lines that open with Latin words, which eng+chi_sim turns into garbage,
    # and English as well (tests/ingest/test_ocr.py). Then the largest image in pixels, refused from its
    # header before it is decoded (50 MP: an A4 page scanned at 600 dpi is 35).
    ocr_languages: str = "chi_sim+eng"
    ocr_max_pixels: int = 50_000_000

    def __post_init__(self) -> None:
        if self.max_file_bytes < 1:
            raise ValueError("max_file_bytes must be positive")
        if not 0.0 < self.dedup_threshold <= 1.0:
            raise ValueError("dedup_threshold must be in (0, 1]")
        if self.workers < 1 or self.batch_chunks < 1:
            raise ValueError("workers and batch_chunks must be at least 1")
        if not re.fullmatch(r"[\w/-]+(\+[\w/-]+)*", self.ocr_languages):
            raise ValueError("ocr_languages must be Tesseract language codes joined by '+', e.g. eng+chi_sim")
        if self.ocr_max_pixels < 1:
            raise ValueError("ocr_max_pixels must be positive")
        if not self.json_text_field:
            raise ValueError("json_text_field must name a field")
