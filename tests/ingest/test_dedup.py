"""MinHash signatures and the LSH index: near copies are found, different texts are not, in English and
Chinese; and the repeated section of llm-notes-1.md is caught chunk by chunk."""

from __future__ import annotations

import random

import numpy as np

from ingest.chunker import Chunker
from ingest.cleaning import clean_document
from ingest.config import ChunkerConfig, IngestConfig
from ingest.dedup import NUM_PERM, NearDuplicateIndex, Signature, lsh_shape, signature
from ingest.loaders import load_file
from retriever.embedder import Embedder
from tests.conftest import shared_file
from tests.ingest.documents import edited

WORDS = "harbour ship tide lamp keeper rock wave storm anchor sail mast crew chart buoy pier coast".split()


def essay(seed: int, words: int = 150) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) + str(rng.randint(0, 9)) for _ in range(words))


def test_similarity_estimates_jaccard() -> None:
    a = signature(essay(1))
    assert a is not None and a.values.shape == (NUM_PERM,) and a.values.dtype == np.uint32
    assert a.similarity(signature(essay(1))) == 1.0  # type: ignore[arg-type]
    near = signature(edited(essay(1), 3, seed=2))
    far = signature(essay(3))
    assert near is not None and far is not None
    assert a.similarity(near) > 0.8 > 0.2 > a.similarity(far)
    assert Signature.from_bytes(a.to_bytes()).similarity(a) == 1.0
    assert signature("  ...  ") is None


def test_chinese_text_is_compared_by_characters() -> None:
    text = "大语言模型通过在海量文本上预训练学习语言规律，然后通过微调适应具体任务。" * 3
    a, b = signature(text), signature(text.replace("海量", "大量", 1))
    c = signature("今天天气很好，我们去公园散步，看到很多人在放风筝和跑步。" * 3)
    assert a is not None and b is not None and c is not None
    assert a.similarity(b) > 0.8 and a.similarity(c) < 0.2


def test_lsh_finds_the_closest_earlier_text_above_the_threshold() -> None:
    index: NearDuplicateIndex[str] = NearDuplicateIndex(0.8)
    for seed in range(50):
        sig = signature(essay(seed))
        assert sig is not None
        index.add(f"essay-{seed}", sig)
    copy = signature(edited(essay(7), 2, seed=1))
    assert copy is not None
    match = index.best_match(copy)
    assert match is not None and match[0] == "essay-7" and match[1] >= 0.8
    assert index.best_match(copy, ignore=lambda key: key == "essay-7") is None
    unrelated = signature(essay(1000))
    assert unrelated is not None and index.best_match(unrelated) is None


def test_lsh_shape_puts_the_steep_part_of_the_curve_at_the_threshold() -> None:
    for threshold in (0.5, 0.8, 0.9):
        bands, rows = lsh_shape(threshold)
        assert bands * rows <= NUM_PERM
        midpoint = (1 / bands) ** (1 / rows)  # where the candidate probability is about one half
        assert abs(midpoint - threshold) < 0.12


def caught_chunks(text: str, title: str, chunker: Chunker) -> tuple[list[tuple[int, int]], int]:
    """Run the chunks of `text` through a chunk-level index as the pipeline does: (duplicate start,
    original start) per chunk caught, and the number of chunks compared."""
    config = IngestConfig()
    index: NearDuplicateIndex[int] = NearDuplicateIndex(config.dedup_threshold)
    caught: list[tuple[int, int]] = []
    compared = 0
    for chunk in chunker.chunk(text, title):
        sig = signature(chunk.draft.text)
        if sig is None or sig.shingles < config.dedup_min_shingles:
            continue
        compared += 1
        match = index.best_match(sig)
        if match is None:
            index.add(chunk.draft.char_start, sig)
        else:
            caught.append((chunk.draft.char_start, match[0]))
    return caught, compared


def test_a_section_repeated_with_small_changes_is_caught_at_chunk_level(embedder: Embedder) -> None:
    """Section 4.5 of llm-notes-1.md, then the same section again with a word changed in every tenth line:
    the chunks of the second copy are caught, pointing at the first, and nothing before it is."""
    path = shared_file("zh/llm-notes-1.md")
    document = load_file(path, path.read_bytes(), IngestConfig()).documents[0]
    text = clean_document(document).text
    first = text.index("### 4.5")
    section = text[first : text.index("### 4.5", first + 1)].strip()
    lines = section.split("\n")
    changed = "\n".join(
        line.replace("模型", "模式", 1) if i % 10 == 5 else line for i, line in enumerate(lines)
    )
    assert changed != section
    doubled = f"{section}\n\n{changed}"
    second = len(section) + 2
    chunker = Chunker(ChunkerConfig(), embedder.count_tokens, embedder.max_content_tokens)
    caught, compared = caught_chunks(doubled, document.title, chunker)
    in_second = sum(1 for start, _ in caught if start >= second)
    assert all(start >= second and original < second for start, original in caught)
    assert in_second >= 0.8 * (compared / 2), f"only {in_second} of ~{compared // 2} chunks caught"
