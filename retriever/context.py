"""Context assembly: turn ranked hits into the passages given to the model.

Adjacent or overlapping chunks of one document are merged into one passage (the model reads one coherent
span instead of two fragments that repeat the overlap), and a passage whose words nearly all appear in a
better-ranked passage is dropped (the same text ingested twice under two names would otherwise take two
slots of a small context window). Fitting the result into the model's token budget is the RAG pipeline's
job (`app.rag.pipeline.fit_sources`), since only it knows the prompt and the model's tokenizer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace

from retriever.records import SearchHit

WORD = re.compile(r"\w+")


def merge_adjacent(hits: Sequence[SearchHit]) -> list[SearchHit]:
    """Merge hits of the same document whose chunks touch or overlap (consecutive ordinals or intersecting
    character ranges). A merged passage takes the rank, score and chunk id of its best-ranked member."""
    rank = {id(hit): position for position, hit in enumerate(hits)}
    by_document: dict[int, list[SearchHit]] = {}
    for hit in hits:
        by_document.setdefault(hit.document_id, []).append(hit)
    runs: list[list[SearchHit]] = []
    for members in by_document.values():
        members.sort(key=lambda hit: (hit.ordinal, hit.char_start))
        run = [members[0]]
        for hit in members[1:]:
            if hit.ordinal - run[-1].ordinal <= 1 or hit.char_start < max(h.char_end for h in run):
                run.append(hit)
            else:
                runs.append(run)
                run = [hit]
        runs.append(run)
    best = [min(run, key=lambda hit: rank[id(hit)]) for run in runs]
    order = sorted(range(len(runs)), key=lambda i: rank[id(best[i])])
    return [_merge(runs[i], best[i]) for i in order]


def _merge(group: list[SearchHit], best: SearchHit) -> SearchHit:
    if len(group) == 1:
        return best
    ordered = sorted(group, key=lambda hit: hit.char_start)
    text, end = ordered[0].text, ordered[0].char_end
    for hit in ordered[1:]:
        if hit.char_end <= end:
            continue  # contained in what is already there
        # Chunks are exact slices of the cleaned document, so the overlap can be cut by offsets; a gap
        # (whitespace the chunker stripped) becomes a paragraph break.
        text += hit.text[end - hit.char_start :] if hit.char_start < end else "\n\n" + hit.text
        end = hit.char_end
    return replace(
        best, ordinal=ordered[0].ordinal, char_start=ordered[0].char_start, char_end=end, text=text
    )


def drop_near_duplicates(hits: Sequence[SearchHit], threshold: float = 0.9) -> list[SearchHit]:
    """Drop a hit when at least `threshold` of its distinct words occur in one better-ranked hit."""
    kept: list[tuple[SearchHit, set[str]]] = []
    for hit in hits:
        words = set(WORD.findall(hit.text.lower()))
        duplicate = any(words and len(words & seen) >= threshold * len(words) for _, seen in kept)
        if not duplicate:
            kept.append((hit, words))
    return [hit for hit, _ in kept]


def assemble_context(hits: Sequence[SearchHit], duplicate_threshold: float = 0.9) -> list[SearchHit]:
    return drop_near_duplicates(merge_adjacent(hits), duplicate_threshold)
