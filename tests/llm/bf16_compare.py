"""Comparing two decodes of one prompt that take different but equivalent paths (compiled or eager, merged or
unmerged adapter, Triton kernels or the reference): tokens agree with close log-probs until, possibly, a near
tie parts them. The default tolerances are bfloat16's."""

from __future__ import annotations

from llm.engine.engine import Request

# The logits are bfloat16: one step of rounding is 0.125 at magnitudes 16-32, and log-probs move with it.
LOGPROB_ATOL = 0.25
NEAR_TIE = 0.3  # where the paths part, the other path's token was this close to its best one


def assert_same_or_near_tie(
    ours: Request, theirs: Request, atol: float = LOGPROB_ATOL, near_tie: float = NEAR_TIE
) -> int:
    """Tokens agree with log-probs closer than `atol` up to a point where `theirs` nearly tied (its best
    token closer than `near_tie` to the one `ours` took); returns how many agreed."""
    for step, (a, b) in enumerate(zip(ours.token_logprobs, theirs.token_logprobs, strict=True)):
        assert a.logprob is not None and b.logprob is not None and b.top_logprobs is not None
        if a.token_id != b.token_id:
            alternatives = dict(b.top_logprobs)
            assert a.token_id in alternatives, f"step {step}: token {a.token_id} not in the other's top 5"
            assert b.logprob - alternatives[a.token_id] < near_tie, f"step {step}: not a near tie"
            return step
        assert abs(a.logprob - b.logprob) < atol, f"step {step}: {a.logprob} vs {b.logprob}"
    return len(ours.token_logprobs)
