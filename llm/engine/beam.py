"""Beam search for one prompt, built on the engine's own steps (a simple path, not continuous-batched).

Each round submits every live beam as a one-token request that reports its top log-probabilities; the prefix
cache makes the shared history of the beams cost nothing but the last partial block. Use it on an engine with
no other traffic: it drives the engine until its own requests are done.
"""

from __future__ import annotations

from dataclasses import dataclass

from llm.base import SamplingParams
from llm.engine.engine import LLMEngine


@dataclass
class Beam:
    token_ids: list[int]
    logprob: float  # sum of the chosen tokens' log-probabilities
    finished: bool = False

    def score(self, length_penalty: float) -> float:
        return self.logprob / max(1, len(self.token_ids)) ** length_penalty


def beam_search(
    engine: LLMEngine,
    prompt_ids: list[int],
    *,
    beam_width: int = 4,
    max_new_tokens: int = 64,
    length_penalty: float = 1.0,
) -> list[Beam]:
    """The `beam_width` best continuations, best first (stop tokens are not included in `token_ids`)."""
    if beam_width < 1 or max_new_tokens < 1:
        raise ValueError("beam_width and max_new_tokens must be >= 1")
    one_token = SamplingParams(max_new_tokens=1)
    live = [Beam([], 0.0)]
    done: list[Beam] = []
    for _ in range(max_new_tokens):
        if len(prompt_ids) + len(live[0].token_ids) + 1 >= engine.max_model_len:
            break
        requests = [
            engine.add_request(prompt_ids + b.token_ids, one_token, logprobs=2 * beam_width) for b in live
        ]
        while engine.has_unfinished:
            engine.step()
        candidates = [
            Beam(beam.token_ids + [token], beam.logprob + logprob, token in engine.stop_token_ids)
            for beam, request in zip(live, requests, strict=True)
            for token, logprob in request.token_logprobs[0].top_logprobs or []
        ]
        candidates.sort(key=lambda b: b.logprob, reverse=True)
        live = []
        for beam in candidates:
            if beam.finished:
                done.append(Beam(beam.token_ids[:-1], beam.logprob, True))
            else:
                live.append(beam)
            if len(live) == beam_width:
                break
        best_done = max((b.score(length_penalty) for b in done), default=float("-inf"))
        if not live or (len(done) >= beam_width and best_done >= max(b.score(length_penalty) for b in live)):
            break
    return sorted(done + live, key=lambda b: b.score(length_penalty), reverse=True)[:beam_width]
