"""Fusion of ranked lists from different retrievers into one ranking.

Reciprocal-rank fusion (Cormack et al., 2009) needs no score calibration: each list contributes
`weight / (k + rank)`, with the customary k = 60. Weighted fusion (the default, see `RetrieverConfig`)
min-max normalizes each list's scores over its candidates to [0, 1] and adds them with weights: it keeps
score margins, so a retriever that is far more confident about its first hit than the other is about its
own wins, where RRF only sees two first places. A candidate missing from a list scores 0 there.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Literal

Ranking = Sequence[tuple[int, float]]  # (chunk id, score), best first
FusionMethod = Literal["rrf", "weighted"]


def reciprocal_rank_fusion(
    rankings: Sequence[Ranking], k: int = 60, weights: Sequence[float] | None = None
) -> list[tuple[int, float]]:
    weights = weights or [1.0] * len(rankings)
    fused: dict[int, float] = defaultdict(float)
    for ranking, weight in zip(rankings, weights, strict=True):
        for rank, (chunk_id, _) in enumerate(ranking, start=1):
            fused[chunk_id] += weight / (k + rank)
    return sorted(fused.items(), key=lambda item: (-item[1], item[0]))


def weighted_fusion(rankings: Sequence[Ranking], weights: Sequence[float]) -> list[tuple[int, float]]:
    fused: dict[int, float] = defaultdict(float)
    for ranking, weight in zip(rankings, weights, strict=True):
        if not ranking:
            continue
        scores = [score for _, score in ranking]
        low, span = min(scores), max(scores) - min(scores)
        for chunk_id, score in ranking:
            fused[chunk_id] += weight * ((score - low) / span if span > 0 else 1.0)
    return sorted(fused.items(), key=lambda item: (-item[1], item[0]))


def fuse(
    rankings: Sequence[Ranking], method: FusionMethod, rrf_k: int, weights: Sequence[float]
) -> list[tuple[int, float]]:
    if method == "rrf":
        return reciprocal_rank_fusion(rankings, rrf_k, weights)
    return weighted_fusion(rankings, weights)
