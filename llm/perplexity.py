"""Perplexity of the engine's model on a text, and reading the text file a user asks to score.

The text is tokenized once and cut into consecutive windows of at most `window` tokens, each opened by the
beginning-of-sequence token when the model takes one (Gemma's output is noise without it); every token a
window predicts counts, each scored once by the model runner's `score` (a prefill that writes no cache).
Windows keep the float32 logits of one prefill, (window, vocabulary), within reach of a laptop: 0.5 GB for
Gemma 3's 262k tokens at the default 512, the context `llama-perplexity` uses by default. (Its figures are
not ours: it scores only the second half of each window.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from llm.config import EngineConfig
from llm.engine.engine import LLMEngine
from llm.engine.sanity import Scorer
from llm.tokenizer import Tokenizer

DEFAULT_WINDOW = 512


class TextFileError(ValueError):
    """The file to score is missing, empty, not UTF-8 text, or too short to score."""


@dataclass(frozen=True)
class Perplexity:
    tokens: int  # tokens predicted and scored
    mean_nll: float  # mean negative log-likelihood per scored token, in nats

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_nll)


def read_text_file(path: Path) -> str:
    """The UTF-8 text of `path`, or `TextFileError` with one line naming the file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TextFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise TextFileError(f"{path}: a folder, not a text file") from None
    except OSError as error:
        raise TextFileError(f"{path}: cannot be read ({error.strerror})") from None
    if not data.strip():
        raise TextFileError(f"{path}: the file is empty")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\x00" in text:
        raise TextFileError(f"{path}: not a text file (binary or not UTF-8)")
    return text


def windows(ids: list[int], bos_id: int | None, window: int) -> list[list[int]]:
    """`ids` in consecutive windows of at most `window` tokens, each opened by `bos_id` unless it is None."""
    opening = [] if bos_id is None else [bos_id]
    step = window - len(opening)
    return [opening + ids[start : start + step] for start in range(0, len(ids), step)]


def perplexity(
    engine: LLMEngine, tokenizer: Tokenizer, text: str, window: int = DEFAULT_WINDOW
) -> Perplexity:
    """The model's perplexity on `text`, in windows of at most `window` tokens (and of the engine's context
    length); `TextFileError` when the text holds fewer than two tokens to score from."""
    runner = engine.runner
    if not isinstance(runner, Scorer):
        raise TypeError(f"{type(runner).__name__} cannot score tokens")
    bos_id = tokenizer.bos_id if tokenizer.add_bos else None
    scored = [
        runner.score(ids)
        for ids in windows(tokenizer.encode(text), bos_id, min(window, engine.max_model_len))
        if len(ids) > 1
    ]
    if not scored:
        raise TextFileError("the text is too short to score: it needs at least two tokens")
    logprobs = torch.cat(scored).double()
    return Perplexity(len(logprobs), -logprobs.mean().item())


def perplexity_of_file(
    config: EngineConfig, path: Path, window: int = DEFAULT_WINDOW
) -> tuple[str, Perplexity]:
    """Score the text file `path` with the engine `config` describes; returns (model name, perplexity).
    A file that cannot be scored raises `TextFileError` naming it, before the model loads when it can."""
    from llm.engine import create_engine

    text = read_text_file(path)
    engine, tokenizer, name = create_engine(config)
    try:
        return name, perplexity(engine, tokenizer, text, window)
    except TextFileError as error:
        raise TextFileError(f"{path}: {error}") from None
