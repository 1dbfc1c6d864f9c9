"""Rank fusion and context assembly (merging adjacent chunks, dropping near-duplicates)."""

from __future__ import annotations

import pytest

from retriever.context import assemble_context, drop_near_duplicates, merge_adjacent
from retriever.fusion import reciprocal_rank_fusion, weighted_fusion
from retriever.records import SearchHit


def test_reciprocal_rank_fusion() -> None:
    dense = [(1, 0.9), (2, 0.8), (3, 0.1)]
    lexical = [(3, 12.0), (1, 5.0)]
    fused = reciprocal_rank_fusion([dense, lexical], k=60)
    assert [chunk_id for chunk_id, _ in fused] == [1, 3, 2]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62)
    weighted = reciprocal_rank_fusion([dense, lexical], k=60, weights=[0.0, 1.0])
    assert [chunk_id for chunk_id, _ in weighted][:2] == [3, 1]


def test_weighted_fusion_normalizes_each_list() -> None:
    dense = [(1, 0.9), (2, 0.5)]
    lexical = [(2, 30.0), (3, 10.0)]
    fused = dict(weighted_fusion([dense, lexical], [0.5, 0.5]))
    assert fused == pytest.approx({1: 0.5, 2: 0.5, 3: 0.0})
    assert weighted_fusion([[], lexical], [0.5, 0.5])[0][0] == 2


def hit(
    chunk_id: int, document_id: int, ordinal: int, start: int, text: str, score: float = 1.0
) -> SearchHit:
    return SearchHit(
        chunk_id, document_id, f"doc{document_id}", "", ordinal, start, start + len(text), text, score
    )


DOCUMENT = "Alpha beta gamma. Delta epsilon zeta. Eta theta iota. Kappa lambda mu."


def piece(start: int, end: int) -> str:
    return DOCUMENT[start:end]


def test_merge_adjacent_cuts_the_overlap_by_offsets() -> None:
    first = hit(1, 7, 0, 0, piece(0, 36), 0.5)  # "Alpha ... zeta."
    second = hit(2, 7, 1, 18, piece(18, 53), 0.9)  # overlaps "Delta epsilon zeta."
    other = hit(3, 8, 1, 0, "Unrelated text from another document.", 0.7)
    far = hit(4, 7, 5, 54, piece(54, 71), 0.2)  # same document, not adjacent
    merged = merge_adjacent([second, other, first, far])
    assert [h.chunk_id for h in merged] == [2, 3, 4]
    assert merged[0].text == piece(0, 53)
    assert (merged[0].char_start, merged[0].char_end, merged[0].score) == (0, 53, 0.9)  # best-ranked: 2
    assert merged[0].ordinal == 0


def test_merge_chains_through_a_later_hit_and_bridges_gaps() -> None:
    a = hit(1, 7, 0, 0, piece(0, 17))
    c = hit(3, 7, 2, 38, piece(38, 53))
    b = hit(2, 7, 1, 18, piece(18, 37))  # touches both a and c
    [merged] = merge_adjacent([a, c, b])
    assert merged.text == piece(0, 17) + "\n\n" + piece(18, 37) + "\n\n" + piece(38, 53)
    assert (merged.char_start, merged.char_end) == (0, 53)


def test_near_duplicates_are_dropped_keeping_the_better_ranked() -> None:
    text = "The Aletsch Glacier is the largest glacier in the Alps, in the canton of Valais."
    copy = hit(2, 9, 0, 0, text.replace("largest", "largest,"))
    kept = drop_near_duplicates([hit(1, 8, 0, 0, text), copy, hit(3, 10, 0, 0, "Rockets burn fuel.")])
    assert [h.chunk_id for h in kept] == [1, 3]
    assert [h.chunk_id for h in assemble_context([hit(1, 8, 0, 0, text), copy])] == [1]
