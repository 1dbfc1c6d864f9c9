"""The BM25 index: tokenization, scoring, incremental updates, filters and persistence."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from retriever.lexical import LexicalIndex, Tokenizer
from retriever.vector_index import IndexMismatchError

DOCS = {
    1: "Cats purr when they are content and sleep most of the day.",
    2: "Dogs bark at strangers; a barking dog rarely bites.",
    3: "The rocket engine burns fuel and oxidizer to produce thrust.",
    4: "大语言模型使用注意力机制处理长文本。",
    5: "Kittens and cats are playful; a cat chases string.",
}


def same_ranking(a: list[tuple[int, float]], b: list[tuple[int, float]]) -> bool:
    return [i for i, _ in a] == [i for i, _ in b] and [s for _, s in a] == pytest.approx([s for _, s in b])


def build(ids: list[int], path: Path | None = None) -> LexicalIndex:
    index = LexicalIndex(path)
    index.add(ids, [DOCS[i] for i in ids])
    return index


def test_tokenizer_stems_drops_stop_words_and_splits_cjk_into_bigrams_and_characters() -> None:
    tokens = Tokenizer()("The dogs were barking at the Broncos' 50 games 注意力机制")
    assert tokens[:6] == ["dog", "were", "bark", "bronco", "50", "game"]
    assert "the" not in tokens and "at" not in tokens
    assert tokens[6:] == ["注意", "意力", "力机", "机制", "注", "意", "力", "机", "制"]
    assert Tokenizer()("猫") == ["猫"]


def test_bm25_scores_follow_the_formula() -> None:
    index = build([1, 2, 3, 5])
    [(best, score), *_] = index.search("purr cat", 5)
    assert best == 1
    # Hand computation for chunk 1 with Lucene's IDF, k1 = 1.2, b = 0.75.
    tokenize = Tokenizer()
    lengths = {i: len(tokenize(DOCS[i])) for i in (1, 2, 3, 5)}
    average = sum(lengths.values()) / 4

    def term(df: int, tf: int, length: int) -> float:
        idf = math.log(1 + (4 - df + 0.5) / (df + 0.5))
        return idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * length / average))

    expected = term(1, 1, lengths[1]) + term(2, 1, lengths[1])  # "purr" in 1; "cat" in 1 and 5
    assert score == pytest.approx(expected, rel=1e-5)
    assert index.search("nothing matches zebra", 5) == []


def test_incremental_updates_equal_a_fresh_build() -> None:
    index = build([1, 2, 3])
    index.add([5, 4], [DOCS[5], DOCS[4]])
    index.remove([2])
    fresh = build([1, 3, 5, 4])
    for query in ("cat", "dog barking", "rocket fuel", "注意力", "playful cats sleep"):
        assert same_ranking(index.search(query, 10), fresh.search(query, 10)), query
    assert sorted(index.ids().tolist()) == [1, 3, 4, 5]


def test_compaction_after_many_removals_keeps_results() -> None:
    index = LexicalIndex()
    index.add(list(range(3000)), [f"filler text number {i} about nothing" for i in range(3000)])
    index.add([9001], ["the special zebra document"])
    index.remove(range(2500))
    assert index.size == 501 and len(index._slot_ids) == 501  # compacted: dead slots dropped
    assert index.search("zebra", 3)[0][0] == 9001
    assert {chunk_id for chunk_id, _ in index.search("filler", 1000)} == set(range(2500, 3000))


def test_allowed_ids_filter_inside_the_ranking() -> None:
    index = build([1, 2, 3, 5])
    assert [i for i, _ in index.search("cat kitten playful", 1)] == [5]
    # Chunk 1 is not the best match, yet a filter on it still finds it with k = 1.
    assert [i for i, _ in index.search("cat kitten playful", 1, allowed=np.array([1]))] == [1]
    assert index.search("cat", 5, allowed=np.array([3])) == []


def test_save_load_and_bad_files(tmp_path: Path) -> None:
    path = tmp_path / "c.bm25.npz"
    index = build([1, 2, 3, 4], path)
    index.remove([3])
    index.save(7)
    loaded = LexicalIndex(path)
    assert loaded.version == 7
    assert same_ranking(loaded.search("dogs bark", 3), index.search("dogs bark", 3))
    assert sorted(loaded.ids().tolist()) == [1, 2, 4]

    path.write_bytes(b"not an index")
    with pytest.raises(IndexMismatchError, match="archivist reindex"):
        LexicalIndex(path)

    class OtherTokenizer(Tokenizer):
        signature = "whitespace/1"

    # An index of another tokenizer is not read: it starts empty, for the knowledge base to rebuild.
    build([1], tmp_path / "other.npz").save(1)
    other = LexicalIndex(tmp_path / "other.npz", OtherTokenizer())
    assert other.size == 0 and other.version == -1
