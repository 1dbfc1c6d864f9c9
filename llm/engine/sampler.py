"""Sampling on the device: penalties, temperature, min-p, top-k, top-p, per-request seeds, log-probs.

All rows are processed together; only the per-request random draws loop in Python, because a seeded request
must draw from its own generator (same seed -> same text, whatever else shares the batch). Sampling uses the
exponential-race trick (`argmax(p / E)`, E ~ Exp(1)), which draws from `p` without a multinomial call and
makes the draw a plain tensor op. The caller gets one small tensor back and converts it with one `.tolist()`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llm.base import SamplingParams
from llm.engine.engine import Request, Sample


@dataclass
class SamplerOutput:
    """Device tensor to fetch in one sync; `decode` turns the fetched list into `Sample`s."""

    packed: torch.Tensor  # (rows,) token ids, or (rows, 2 + 2 * top) float64 when log-probs were asked for
    top: int  # number of alternatives per row in `packed` (-1: ids only)

    def decode(self, values: list) -> list[Sample]:
        if self.top < 0:
            return [Sample(int(v)) for v in values]
        out = []
        for row in values:
            ids, lps = row[2 : 2 + self.top], row[2 + self.top :]
            out.append(Sample(int(row[0]), row[1], [(int(i), lp) for i, lp in zip(ids, lps, strict=True)]))
        return out


class Sampler:
    def __init__(self, device: torch.device, seed: int) -> None:
        self.device = device
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __call__(self, logits: torch.Tensor, requests: list[Request]) -> SamplerOutput:
        """logits (rows, vocab) float32, one row per request -> the picked token of each row."""
        params = [r.params for r in requests]
        want_logprobs = any(r.logprobs is not None for r in requests)
        raw = logits
        if any(p.repetition_penalty != 1.0 or p.presence_penalty != 0.0 for p in params):
            logits = self._penalize(logits, requests)
        openings = [
            (i, r.opening_bias) for i, r in enumerate(requests) if r.opening_bias and not r.completion_tokens
        ]
        if openings:
            logits = self._bias(logits, openings)
        constrained = [
            (i, r.copy_state.allowed()) for i, r in enumerate(requests) if r.copy_state is not None
        ]
        if any(allowed is not None for _, allowed in constrained):
            logits = self._restrict(logits, constrained)
        if all(p.greedy for p in params):
            tokens = first_max(logits)
        else:
            tokens = self._sample(logits, requests)
        if not want_logprobs:
            return SamplerOutput(tokens, -1)
        top = max(r.logprobs or 0 for r in requests)
        logprobs = torch.log_softmax(raw, dim=-1)  # the model's own distribution, before any processing
        chosen = logprobs.gather(1, tokens[:, None])
        top_lp, top_ids = logprobs.topk(top, dim=-1) if top else (chosen[:, :0], chosen[:, :0])
        packed = torch.cat(
            (tokens[:, None].double(), chosen.double(), top_ids.double(), top_lp.double()), dim=1
        )
        return SamplerOutput(packed, top)

    def _tensor(self, values: list, dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype).to(self.device, non_blocking=True)

    def _penalize(self, logits: torch.Tensor, requests: list[Request]) -> torch.Tensor:
        rows, vocab = logits.shape
        seen = torch.zeros(rows, vocab + 1, dtype=torch.bool, device=logits.device)  # last column: padding
        generated = torch.zeros_like(seen)
        for mask, ids_of in (
            (seen, lambda r: r.seq.token_ids),
            (generated, lambda r: r.seq.completion_token_ids),
        ):
            lists = [ids_of(r) for r in requests]
            width = max(1, max(len(x) for x in lists))
            padded = self._tensor([x + [vocab] * (width - len(x)) for x in lists], torch.int64)
            mask.scatter_(1, padded, True)
        seen, generated = seen[:, :vocab], generated[:, :vocab]
        repetition = self._tensor([r.params.repetition_penalty for r in requests], torch.float32)[:, None]
        presence = self._tensor([r.params.presence_penalty for r in requests], torch.float32)[:, None]
        # Repetition (CTRL / transformers): shrink the logit of every token already in prompt or answer.
        penalized = torch.where(logits > 0, logits / repetition, logits * repetition)
        logits = torch.where(seen, penalized, logits)
        # Presence (OpenAI): a flat cut for every token the answer already used.
        return logits - presence * generated

    def _bias(self, logits: torch.Tensor, openings: list[tuple[int, dict[int, float]]]) -> torch.Tensor:
        """Add each row's opening bias (first generated token only) to a copy of the logits."""
        rows = [row for row, bias in openings for _ in bias]
        columns = [token for _, bias in openings for token in bias]
        values = [value for _, bias in openings for value in bias.values()]
        biased = logits.clone()
        biased.index_put_(
            (self._tensor(rows, torch.int64), self._tensor(columns, torch.int64)),
            self._tensor(values, logits.dtype),
            accumulate=True,
        )
        return biased

    def _restrict(
        self, logits: torch.Tensor, constrained: list[tuple[int, list[int] | None]]
    ) -> torch.Tensor:
        """A copy of the logits where each constrained row keeps only its allowed tokens (`llm.copying`)."""
        allowed_by_row = dict(constrained)
        rows = [row for row, allowed in constrained if allowed is not None for _ in allowed]
        columns = [token for _, allowed in constrained if allowed is not None for token in allowed]
        keep = torch.zeros_like(logits, dtype=torch.bool)
        free = [row for row in range(logits.shape[0]) if allowed_by_row.get(row) is None]
        keep[self._tensor(free, torch.int64)] = True
        keep[self._tensor(rows, torch.int64), self._tensor(columns, torch.int64)] = True
        return logits.masked_fill(~keep, float("-inf"))

    def _sample(self, logits: torch.Tensor, requests: list[Request]) -> torch.Tensor:
        params: list[SamplingParams] = [r.params for r in requests]
        greedy = self._tensor([p.greedy for p in params], torch.bool)
        temperature = self._tensor([p.temperature if not p.greedy else 1.0 for p in params], torch.float32)
        probs = torch.softmax(logits / temperature[:, None], dim=-1)
        if any(p.min_p > 0 for p in params):
            min_p = self._tensor([p.min_p for p in params], torch.float32)[:, None]
            probs = probs.masked_fill(probs < min_p * probs.amax(dim=-1, keepdim=True), 0.0)
        if any(p.top_k > 0 or p.top_p < 1.0 for p in params):
            probs = self._top_k_top_p(probs, params)
        noise = torch.empty_like(probs)
        unseeded = [i for i, r in enumerate(requests) if r.params.seed is None]
        if unseeded:
            noise[unseeded] = torch.empty(len(unseeded), probs.shape[1], device=probs.device).exponential_(
                generator=self.generator
            )
        for i, request in enumerate(requests):
            if request.params.seed is not None:
                if request.sampler_state is None:
                    request.sampler_state = torch.Generator(device=self.device).manual_seed(
                        request.params.seed
                    )
                noise[i].exponential_(generator=request.sampler_state)
        sampled = first_max(probs / noise)
        return torch.where(greedy, first_max(logits), sampled)

    def _top_k_top_p(self, probs: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
        vocab = probs.shape[1]
        top_k = self._tensor([p.top_k if p.top_k > 0 else vocab for p in params], torch.int64)[:, None]
        top_p = self._tensor([p.top_p for p in params], torch.float32)[:, None]
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        rank = torch.arange(vocab, device=probs.device)[None, :]
        before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the strictly better tokens
        drop = (rank >= top_k) | (before > top_p * sorted_probs.sum(dim=-1, keepdim=True))
        drop[:, 0] = False  # always keep the best token
        return probs.scatter(1, order, sorted_probs.masked_fill(drop, 0.0))


def first_max(rows: torch.Tensor) -> torch.Tensor:
    """Index of each row's largest value, the first one on ties: `argmax`, but through `max`, which is 3x
    faster on the CPU over a vocabulary-wide row (Gemma 3's 262k: 0.11 ms against 0.34)."""
    return rows.max(dim=-1).indices
