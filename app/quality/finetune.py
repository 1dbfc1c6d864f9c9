"""`archivist finetune`: teach the LLM the RAG answer format with a LoRA adapter, from a SQuAD-format file.

Each training example is exactly what the service sends at query time: `app.rag.pipeline.build_messages` over
passages retrieved by the real pipeline (hybrid search over the articles ingested into a temporary knowledge
base), with the gold passage placed at a random position among retrieved distractors, and the target is a
short answer followed by its citation (`Denver Broncos [2]`). Questions answered by the same passage are asked
of the same passages (`app.quality.rag_examples.RagGroup`: trained in one packed pass), together with
questions of the same article whose answer is in none of the passages, with the no-answer reply as target
(about `no_answer_share` of all), so that the model learns to refuse. Articles are split into training and
validation sets (`app.quality.evaluation.split_articles`); validation questions are never trained on, and
exact match / F1 on them (gold passage + 2 distractors) are reported at the end. Training may go on from an
earlier adapter (`FinetuneOptions.start_from`, with its rank and scale), e.g. for another pass over the same
questions asked of other passages (another seed), or on questions written over the same training articles
(`FinetuneOptions.questions`, `app.quality.written_questions`).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from app.quality.evaluation import (
    build_knowledge_base,
    exact_match,
    f1_score,
    load_squad,
    one_intra_op_thread,
    split_articles,
    throwaway_knowledge_base,
)
from app.quality.rag_examples import RagExample, RagGroup, build_examples, build_groups
from app.quality.written_questions import (
    WrittenQuestionsError,
    load_written_questions,
    with_written_questions,
)
from app.rag.grounding import CITATION, NO_ANSWER
from app.rag.pipeline import build_messages
from app.settings import Settings
from ingest.pipeline import Ingestor


class FinetuneError(ValueError):
    """The training file or the model cannot be used for fine-tuning."""


@dataclass(frozen=True)
class FinetuneOptions:
    examples: int = 1000
    validation_questions: int = 60
    passages: tuple[int, ...] = (1, 2, 2, 3, 3, 4, 5)  # passage counts drawn per example
    no_answer_share: float = 0.15
    max_prompt_tokens: int = 1100
    rank: int = 16
    alpha: float = 32.0
    learning_rate: float = 1e-3
    batch_size: int = 8
    epochs: int = 1
    seed: int = 0
    start_from: str | None = None  # folder of an adapter (PEFT format) to go on training
    # A written-questions file (`app.quality.written_questions`): trained on instead of the training
    # articles' own questions.
    questions: str | None = None


@dataclass
class FinetuneReport:
    output: str
    train_articles: list[str]
    validation_articles: list[str]
    train_examples: int
    no_answer_examples: int
    seconds: float
    final_loss: float
    options: dict[str, Any]
    validation: dict[str, float] = field(default_factory=dict)
    started_from: dict[str, Any] | None = None  # the training.json of the adapter training went on from


def answer_text(reply: str) -> str:
    """The reply without its citation markers, as scored against SQuAD answers."""
    return CITATION.sub("", reply).strip()


def run_finetune(
    settings: Settings,
    squad: Path,
    output: Path,
    options: FinetuneOptions,
    progress: Callable[[str, int, int, str], None] | None = None,
) -> FinetuneReport:
    """Build the examples, train, save the adapter (PEFT format) with `training.json`, and validate."""
    import torch

    from llm.hf import load_causal_lm
    from llm.locate import default_llm_path
    from llm.lora.adapter import PROJECTIONS, AdapterError, load_adapter, save_adapter
    from llm.lora.train import TrainConfig, TrainExample, train_lora, trained_weights
    from llm.tokenizer import load_tokenizer

    started = time.perf_counter()
    initial, started_from = None, None
    modules: tuple[str, ...] = PROJECTIONS
    if options.start_from is not None:
        folder = Path(options.start_from)
        try:
            earlier = load_adapter(folder)
        except AdapterError as error:
            raise FinetuneError(str(error)) from error
        if not set(earlier.target_modules) <= set(PROJECTIONS):
            raise FinetuneError(f"{folder}: adapts {', '.join(earlier.target_modules)}; training "
                                f"goes on from adapters of {', '.join(PROJECTIONS)} only")  # fmt: skip
        # Its rank and scale (alpha / rank, which also stands for an rsLoRA scale) carry over.
        options = replace(options, rank=earlier.rank, alpha=earlier.scale * earlier.rank)
        initial, modules = earlier.unscaled_weights(), earlier.target_modules
        record = folder / "training.json"
        started_from = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {}
    articles = load_squad(squad)
    train_ids = split_articles(len(articles), "train")
    if options.questions is not None:
        try:
            written = load_written_questions(Path(options.questions))
            articles = with_written_questions(articles, written, train_ids)
        except WrittenQuestionsError as error:
            raise FinetuneError(str(error)) from error
    validation_ids = split_articles(len(articles), "validation")
    rng = random.Random(options.seed)
    model_path = settings.llm_path or default_llm_path()
    tokenizer = load_tokenizer(model_path)
    with throwaway_knowledge_base(settings, "archivist-finetune-") as (kb, kb_settings, files):
        if progress:
            progress("building the knowledge base", 0, 0, "")
        ingestor = Ingestor(kb, kb_settings.chunker_config())
        documents, questions, _ = build_knowledge_base(kb, ingestor, articles, files)
        train_questions = [q for q in questions if q.article in train_ids]
        validation_questions = [q for q in questions if q.article in validation_ids]
        if not train_questions or not validation_questions:
            raise FinetuneError(f"{squad}: needs questions in both the training and validation articles")
        if progress:
            progress("retrieving passages for the examples", 0, 0, "")
        with one_intra_op_thread():  # one short query at a time: more threads only spin-wait
            groups = build_groups(
                kb, documents, train_questions, options.examples, rng, options.passages,
                options.no_answer_share,
            )  # fmt: skip
            validation = build_examples(
                kb, documents, validation_questions, options.validation_questions, rng, (3,), 0.0
            )

    def encode(example: RagExample) -> TrainExample:
        prompt = tokenizer.apply_chat_template(build_messages(example.question, example.sources))
        return TrainExample(prompt, tokenizer.encode(example.target + tokenizer.end_of_turn))

    encoded: list[list[TrainExample]] = []
    no_answer = 0
    for group in groups:
        fitted: RagGroup | None = group
        while fitted is not None:  # drop distractors until the longest prompt of the group fits
            batch = [encode(example) for example in fitted.examples()]
            if max(len(e.prompt_ids) for e in batch) <= options.max_prompt_tokens:
                encoded.append(batch)
                no_answer += sum(answer is None for _, answer in fitted.items)
                break
            fitted = fitted.without_a_distractor()
    train_examples = sum(len(batch) for batch in encoded)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if settings.llm_threads:  # on a shared machine one thread beats two that wait for each other
        torch.set_num_threads(settings.llm_threads)
    model = load_causal_lm(model_path, device)
    config = TrainConfig(
        rank=options.rank, alpha=options.alpha, target_modules=modules, learning_rate=options.learning_rate,
        batch_size=options.batch_size, epochs=options.epochs, seed=options.seed,
    )  # fmt: skip
    losses: list[float] = []

    def report_step(state: Any) -> None:
        losses.append(state.loss)
        if progress:
            info = f"loss {state.loss:.3f}, {state.examples_per_s:.2f} examples/s"
            progress("training", state.step, state.total, info)

    try:
        wrapped = train_lora(model, encoded, config, report_step, initial)
    except ValueError as error:  # an adapter to go on from that does not fit this model
        raise FinetuneError(f"{options.start_from}: {error}") from error
    scores = validate(model, tokenizer, validation, progress)
    report = FinetuneReport(
        output=str(output),
        train_articles=[str(articles[i]["title"]) for i in sorted(train_ids)],
        validation_articles=[str(articles[i]["title"]) for i in sorted(validation_ids)],
        train_examples=train_examples,
        no_answer_examples=no_answer,
        seconds=time.perf_counter() - started,
        final_loss=losses[-1] if losses else float("nan"),
        options=asdict(options),
        validation=scores,
        started_from=started_from,
    )
    save_adapter(
        output, trained_weights(wrapped), rank=options.rank, alpha=options.alpha, base_model=model_path.name
    )
    (output / "training.json").write_text(json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8")
    return report


def validate(
    model: Any,
    tokenizer: Any,
    examples: Sequence[RagExample],
    progress: Callable[[str, int, int, str], None] | None = None,
    max_new_tokens: int = 32,
) -> dict[str, float]:
    """Greedy answers of the trained model on `examples`: exact match, F1 and the share refused."""
    import torch

    em: list[float] = []
    f1: list[float] = []
    refused = 0
    stop = sorted(tokenizer.stop_token_ids)
    for number, example in enumerate(examples, start=1):
        prompt = tokenizer.apply_chat_template(build_messages(example.question, example.sources))
        ids = torch.tensor([prompt], device=next(model.parameters()).device)
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop)
        reply = tokenizer.decode(out[0, len(prompt) :].tolist()).strip()
        refused += reply == NO_ANSWER
        em.append(exact_match(answer_text(reply), example.answers))
        f1.append(f1_score(answer_text(reply), example.answers))
        if progress:
            progress("validating", number, len(examples), f"EM {sum(em) / len(em):.2f}")
    count = max(len(examples), 1)
    return {
        "questions": len(examples),
        "exact_match": sum(em) / count,
        "f1": sum(f1) / count,
        "refused": refused / count,
    }
