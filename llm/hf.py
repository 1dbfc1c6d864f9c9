"""Reference generation backend on Hugging Face transformers (also the baseline for parity tests).

Loads a local GGUF file (dequantized by transformers) or a local safetensors folder, applies the model's
chat template and streams text through `TextIteratorStreamer`. One generation runs at a time.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

from llm.base import (
    NO_ADAPTER,
    ChatMessage,
    ContextOverflowError,
    FinishReason,
    GenerationEvent,
    SamplingParams,
    UnknownAdapterError,
    opening_bias_by_token,
)
from llm.copying import CopyState, CopyTable
from llm.locate import ModelNotFoundError
from llm.tokenizer import token_bytes


class _Cancelled:
    """A stopping criterion that ends generation when the consumer goes away."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> bool:
        return self.event.is_set()


class _OpeningBias:
    """A logits processor adding `SamplingParams.opening_bias` (by first token id) at the first generated
    position only."""

    def __init__(self, prompt_length: int, bias: dict[int, float]) -> None:
        self.prompt_length = prompt_length
        self.bias = bias

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if input_ids.shape[1] != self.prompt_length:
            return scores
        scores = scores.clone()
        for token, value in self.bias.items():
            scores[:, token] += value
        return scores


class _CopyConstraint:
    """A logits processor keeping only the tokens `llm.copying.CopyState` allows next (one sequence)."""

    def __init__(self, prompt_length: int, state: CopyState) -> None:
        self.prompt_length = prompt_length
        self.state = state

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if input_ids.shape[1] > self.prompt_length:
            self.state.advance(int(input_ids[0, -1]))
        allowed = self.state.allowed()
        if allowed is None:
            return scores
        kept = scores.new_full(scores.shape, float("-inf"))
        kept[:, allowed] = scores[:, allowed]
        return kept


class HFGenerator:
    def __init__(self, model_path: Path, device: str = "cpu") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        if not model_path.exists():
            raise ModelNotFoundError(f"LLM path {model_path} does not exist: set ARCHIVIST_LLM_PATH")
        directory, kwargs = _from_pretrained_args(model_path)
        self.tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True, **kwargs)
        self.model = load_causal_lm(model_path, device)
        self.device = device
        self.name = model_path.stem
        self.context_window = int(getattr(self.model.config, "max_position_embeddings", 2048))
        self._lock = threading.Lock()
        self._copy: CopyTable | None = None

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _copy_table(self) -> CopyTable:
        if self._copy is None:
            self._copy = CopyTable(token_bytes(self.tokenizer.backend_tokenizer))
        return self._copy

    def _stop_ids(self) -> set[int]:
        configured = self.model.generation_config.eos_token_id
        ids = set(configured) if isinstance(configured, list) else {configured}
        return {i for i in (*ids, self.tokenizer.eos_token_id) if i is not None}

    def encode_chat(self, messages: Sequence[ChatMessage]) -> list[int]:
        conversation = [{"role": m.role, "content": m.content} for m in messages]
        encoded: Any = self.tokenizer.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=True
        )
        ids = encoded["input_ids"] if isinstance(encoded, dict) or hasattr(encoded, "keys") else encoded
        return list(ids)

    def stream(self, messages: Sequence[ChatMessage], params: SamplingParams) -> Iterator[GenerationEvent]:
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList, TextIteratorStreamer

        if params.adapter not in (None, NO_ADAPTER):
            raise UnknownAdapterError(f"the transformers backend serves no adapters, not {params.adapter!r}")
        if params.logprobs is not None:
            raise ValueError("the transformers backend reports no logprobs; the engine backend does")
        prompt_ids = self.encode_chat(messages)
        if len(prompt_ids) + params.max_new_tokens > self.context_window:
            raise ContextOverflowError(
                f"prompt of {len(prompt_ids)} tokens plus {params.max_new_tokens} new tokens exceeds the "
                f"context window of {self.context_window}"
            )
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        cancelled = _Cancelled()
        generate_kwargs: dict[str, Any] = {
            "input_ids": torch.tensor([prompt_ids], device=self.device),
            "max_new_tokens": params.max_new_tokens,
            "streamer": streamer,
            "stopping_criteria": StoppingCriteriaList([cancelled]),
            "pad_token_id": self.tokenizer.eos_token_id,
            "repetition_penalty": params.repetition_penalty,
        }
        processors = LogitsProcessorList()
        if params.opening_bias:
            bias = opening_bias_by_token(
                params, lambda text: self.tokenizer.encode(text, add_special_tokens=False)
            )
            processors.append(_OpeningBias(len(prompt_ids), bias))
        if params.copy_spans is not None:
            state = CopyState(params.copy_spans, self._copy_table(), self._stop_ids())
            processors.append(_CopyConstraint(len(prompt_ids), state))
        if processors:
            generate_kwargs["logits_processor"] = processors
        if params.greedy:
            generate_kwargs["do_sample"] = False
        else:
            generate_kwargs.update(
                do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or None
            )
            if params.min_p:
                generate_kwargs["min_p"] = params.min_p
        output: dict[str, Any] = {}

        def run() -> None:
            try:
                with self._lock, torch.inference_mode():
                    if params.seed is not None:
                        torch.manual_seed(params.seed)
                    output["ids"] = self.model.generate(**generate_kwargs)
            except BaseException as error:  # re-raised in the consumer's thread
                output["error"] = error
                streamer.end()

        worker = threading.Thread(target=run, name="hf-generate", daemon=True)
        worker.start()
        text = ""
        finish: FinishReason = "stop"
        try:
            for piece in streamer:
                text += piece
                stop_at = _first_stop(text, params.stop)
                if stop_at is not None:
                    piece = piece[: len(piece) - (len(text) - stop_at)]
                    cancelled.event.set()
                    if piece:
                        yield GenerationEvent(text=piece)
                    break
                if piece:
                    yield GenerationEvent(text=piece)
        finally:
            cancelled.event.set()
            worker.join()
        if "error" in output:
            raise output["error"]
        completion = int(output["ids"].shape[1]) - len(prompt_ids) if "ids" in output else 0
        if completion >= params.max_new_tokens:
            finish = "length"
        yield GenerationEvent(
            text="", finish_reason=finish, prompt_tokens=len(prompt_ids), completion_tokens=completion
        )


def _from_pretrained_args(model_path: Path) -> tuple[str, dict[str, Any]]:
    """transformers' `from_pretrained` arguments for a GGUF file or a model folder."""
    if model_path.is_file():
        return str(model_path.parent), {"gguf_file": model_path.name}
    return str(model_path), {}


def load_causal_lm(model_path: Path, device: str = "cpu") -> Any:
    """The transformers model of a local GGUF file (dequantized to float32) or safetensors folder, in eval
    mode on `device`; the reference for parity tests and the base that LoRA training adapts."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # transformers' GGUF dequantization draws its own tqdm bar; TQDM_DISABLE silences it.
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch
    from transformers import AutoModelForCausalLM

    if not model_path.exists():
        raise ModelNotFoundError(f"LLM path {model_path} does not exist: set ARCHIVIST_LLM_PATH")
    directory, kwargs = _from_pretrained_args(model_path)
    model = AutoModelForCausalLM.from_pretrained(
        directory, local_files_only=True, dtype=torch.float32, **kwargs
    )
    return cast(Any, model).to(device).eval()


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    positions = [text.find(stop) for stop in stops if stop and stop in text]
    return min(positions) if positions else None
