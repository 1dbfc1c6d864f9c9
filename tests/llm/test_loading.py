"""Loading: safetensors folders (SmolLM2 re-saved, tiny random families), quantization, tokenizers, and a tiny
GGUF of every GGUF type the engine keeps packed."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from kernels import dispatch
from kernels.layout import Int4Weight, Int8Weight, dequantize
from llm.base import ChatMessage, SamplingParams
from llm.config import EngineConfig
from llm.engine import create_engine
from llm.engine.model_runner import TorchModelRunner
from llm.layers.linear import WeightPolicy
from llm.model.loader import RawTensor, load_model, merge_rows
from llm.perplexity import perplexity
from llm.tokenizer import Tokenizer, from_gguf_fields
from tests.kernels.kernel_cases import DEVICE, needs_triton

pytestmark = pytest.mark.slow

TEXT = (
    "The Roman Empire was the post-Republican state of ancient Rome. It included large territorial holdings "
    "around the Mediterranean Sea in Europe, North Africa, and Western Asia, and was ruled by emperors. "
    "The fall of the Western Roman Empire in 476 AD conventionally marks the end of classical antiquity."
)


@pytest.fixture(scope="module")
def smollm_folder(hf_model, gguf_path, tmp_path_factory):
    """The GGUF's dequantized weights re-saved as a Hugging Face safetensors folder."""
    import json

    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("smollm2")
    config = hf_model.config.to_dict()
    config.pop("quantization_config", None)  # transformers refuses to re-save a GGUF-loaded model itself
    (folder / "config.json").write_text(json.dumps(config))
    state = {k: v.contiguous() for k, v in hf_model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, str(folder / "model.safetensors"))
    AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name).save_pretrained(folder)
    return folder


def test_safetensors_folder_matches_gguf(smollm_folder, exact_engine):
    engine, tokenizer = create_engine(
        EngineConfig(
            model_path=smollm_folder,
            cpu_weights="dequantized",
            num_kv_blocks=128,
            max_model_len=512,
            enforce_eager=True,
        )
    )[:2]
    gguf_engine, gguf_tokenizer = exact_engine
    prompt = tokenizer.apply_chat_template([ChatMessage("user", "Explain how a steam engine works.")])
    assert prompt == gguf_tokenizer.apply_chat_template(
        [ChatMessage("user", "Explain how a steam engine works.")]
    )
    params = SamplingParams(max_new_tokens=32)
    assert engine.generate([prompt], params)[0].text == gguf_engine.generate([prompt], params)[0].text
    ours, theirs = perplexity(engine, tokenizer, TEXT), perplexity(gguf_engine, gguf_tokenizer, TEXT)
    assert abs(ours.perplexity - theirs.perplexity) < 1e-3


@pytest.mark.parametrize(("scheme", "max_change"), [("int8", 0.02), ("int4", 0.25)])
def test_quantize_at_load_short_perplexity_check(smollm_folder, exact_engine, scheme, max_change):
    engine, tokenizer = create_engine(
        EngineConfig(
            model_path=smollm_folder, quantize=scheme, num_kv_blocks=64, max_model_len=512, enforce_eager=True
        )
    )[:2]
    model = engine.runner.model  # type: ignore[attr-defined]
    assert model.layers[0].mlp.down_proj.kind == f"cpu_{scheme}"
    reference = perplexity(*exact_engine, TEXT).perplexity
    quantized = perplexity(engine, tokenizer, TEXT).perplexity
    # Rounding noise moves one short text's perplexity either way (int4 came out 0.26 % lower on one CPU, the
    # packed int4 matmul's accumulation order differs between CPUs): bound the change, not its sign.
    assert abs(quantized / reference - 1) < max_change, (scheme, reference, quantized)


TINY = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 64,
    "vocab_size": 300,
    "max_position_embeddings": 256,
}


@pytest.mark.parametrize(
    ("family", "extra"),
    [
        ("LlamaForCausalLM", {"tie_word_embeddings": False}),
        (
            "LlamaForCausalLM",
            {
                "tie_word_embeddings": True,
                "rope_scaling": {
                    "rope_type": "llama3",
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 64,
                },
            },
        ),
        ("MistralForCausalLM", {"sliding_window": 8}),
        ("Qwen2ForCausalLM", {}),  # QKV bias
    ],
)
def test_tiny_random_families_match_transformers(family, extra, tmp_path):
    import transformers

    torch.manual_seed(0)
    config_class = getattr(transformers, family.replace("ForCausalLM", "Config"))
    hf = getattr(transformers, family)(config_class(**TINY, **extra)).eval()
    if family == "Qwen2ForCausalLM":  # random init leaves biases at zero: make them matter
        for layer in hf.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                torch.nn.init.normal_(proj.bias, std=0.5)
    hf.save_pretrained(tmp_path)
    policy = WeightPolicy(torch.device("cpu"), torch.float32, cpu_weights="dequantized")
    model, _ = load_model(tmp_path, policy, max_positions=256)
    runner = TorchModelRunner(
        model,
        device=torch.device("cpu"),
        dtype=torch.float32,
        num_blocks=4,
        block_size=16,
        max_model_len=64,
        use_cuda_graphs=False,
        cuda_graph_max_batch=1,
        seed=0,
    )
    ids = torch.randint(0, TINY["vocab_size"], (40,)).tolist()  # longer than the sliding window
    with torch.no_grad():
        ref = (
            hf(torch.tensor([ids]))
            .logits[0, :-1]
            .log_softmax(-1)
            .gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
        )
    torch.testing.assert_close(runner.score(ids), ref, atol=1e-4, rtol=1e-4)


def test_gguf_tokenizer_matches_transformers(gguf_path):
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    reader = GGUFReader(gguf_path)
    ours = from_gguf_fields(lambda k: reader.fields[k].contents() if k in reader.fields else None)
    theirs = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    for text in [
        "Hello world! The year 2024 had 366 days.",
        "你好，世界。今天天气很好！",
        "naïve café 🎉\n\n  x",
        "<|im_start|>user\nWhat's up?<|im_end|>\n",
    ]:
        ids = ours.encode(text)
        assert ids == theirs.encode(text, add_special_tokens=False)
        assert ours.decode(ids) == text.replace("<|im_start|>", "").replace("<|im_end|>", "")
    messages = [ChatMessage("system", "Be brief."), ChatMessage("user", "Hi")]
    expected = theirs.apply_chat_template(
        [m.__dict__ for m in messages], tokenize=False, add_generation_prompt=True
    )
    assert ours.render_chat(messages) == expected
    assert ours.stop_token_ids >= {theirs.eos_token_id}


def test_sentencepiece_vocabulary_from_gguf_metadata():
    tokens = [
        "<unk>",
        "<s>",
        "</s>",
        "\u2581",
        "h",
        "e",
        "l",
        "o",
        "\u2581h",
        "ll",
        "\u2581he",
        "llo",
        "\u2581hello",
    ]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    scores = [0.0] * 3 + [-float(i) for i in range(len(tokens) - 3)]
    fields = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": [2, 3, 3] + [1] * 10 + [6] * 256,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
    }
    tok: Tokenizer = from_gguf_fields(fields.get)
    ids = tok.encode("hello")
    assert [tokens[i] for i in ids] == ["\u2581hello"]
    assert tok.decode(tok.encode("hello hell")) == "hello hell"
    assert tok.add_bos and tok.apply_chat_template([ChatMessage("user", "hello")])[0] == 1
    assert tok.decode(tok.encode("é")) == "é"  # byte fallback


# A tiny llama GGUF whose matrices take the GGUF types kept packed: q/k/v mixing Q4_K and Q6_K like Q4_K_M,
# Q5_K, Q5_0, Q5_1, a Q6_K embedding, F16 and BF16 matrices, q/k/v shards that share no packed layout
# (Q5_K + Q8_0), and an output head of a type without a kernel (IQ4_NL). K-quants take in_features % 256 == 0.
CPU = torch.device("cpu")
GGUF_TINY = {"hidden": 256, "ffn": 512, "heads": 4, "kv_heads": 2, "head_dim": 64, "vocab": 96, "layers": 2}
GGUF_TYPES = {
    "token_embd": "Q6_K",
    "output": "IQ4_NL",
    "blk.0.attn_q": "Q4_K",
    "blk.0.attn_k": "Q4_K",
    "blk.0.attn_v": "Q6_K",
    "blk.0.attn_output": "Q5_0",
    "blk.0.ffn_gate": "Q5_1",
    "blk.0.ffn_up": "Q5_1",
    "blk.0.ffn_down": "Q5_K",
    "blk.1.attn_q": "Q5_K",
    "blk.1.attn_k": "Q5_K",
    "blk.1.attn_v": "Q8_0",
    "blk.1.attn_output": "F16",
    "blk.1.ffn_gate": "Q4_K",
    "blk.1.ffn_up": "Q4_K",
    "blk.1.ffn_down": "BF16",
}


def write_tiny_gguf(path: Path, expand: bool) -> Path:
    """The tiny GGUF of `GGUF_TYPES`; `expand`: the same weights stored as F32 (gguf's dequantization)."""
    import gguf

    from tests.kernels.gguf_cases import gguf_blocks, gguf_weights

    t = GGUF_TINY
    hidden, ffn, q, kv = t["hidden"], t["ffn"], t["heads"] * t["head_dim"], t["kv_heads"] * t["head_dim"]
    shapes = {"token_embd": (t["vocab"], hidden), "output": (t["vocab"], hidden)}
    for i in range(t["layers"]):
        shapes |= {
            f"blk.{i}.attn_q": (q, hidden), f"blk.{i}.attn_k": (kv, hidden), f"blk.{i}.attn_v": (kv, hidden),
            f"blk.{i}.attn_output": (hidden, q), f"blk.{i}.ffn_gate": (ffn, hidden),
            f"blk.{i}.ffn_up": (ffn, hidden), f"blk.{i}.ffn_down": (hidden, ffn),
        }  # fmt: skip
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_vocab_size(t["vocab"])
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_block_count(t["layers"])
    writer.add_head_count(t["heads"])
    writer.add_head_count_kv(t["kv_heads"])
    writer.add_layer_norm_rms_eps(1e-5)
    rng = np.random.default_rng(0)
    for norm in ["output_norm"] + [
        f"blk.{i}.{n}" for i in range(t["layers"]) for n in ("attn_norm", "ffn_norm")
    ]:
        writer.add_tensor(f"{norm}.weight", (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32))
    for seed, (name, shape) in enumerate(shapes.items()):
        qtype = GGUF_TYPES[name]
        raw = gguf_blocks(qtype, shape, seed=seed, scale=1e-3)
        if expand:
            writer.add_tensor(f"{name}.weight", gguf_weights(qtype, raw, shape))
        else:
            writer.add_tensor(f"{name}.weight", raw, raw_dtype=gguf.GGMLQuantizationType[qtype])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_ggufs(tmp_path_factory) -> tuple[Path, Path]:
    """(the tiny GGUF with its own types, the same weights expanded to F32)."""
    folder = tmp_path_factory.mktemp("gguf_types")
    return write_tiny_gguf(folder / "quantized.gguf", False), write_tiny_gguf(folder / "expanded.gguf", True)


def score(model, ids: list[int], dtype: torch.dtype, device: torch.device = CPU) -> torch.Tensor:
    runner = TorchModelRunner(
        model, device=device, dtype=dtype, num_blocks=4, block_size=16, max_model_len=64,
        use_cuda_graphs=False, cuda_graph_max_batch=1, seed=0,
    )  # fmt: skip
    return runner.score(ids).cpu()


def layout(linear) -> str | tuple[int, int, bool, bool]:
    """A layer's weight: "dense", or an `Int4Weight`'s (bits, group size, has mins, two-level scales)."""
    w = linear.quantized
    if linear.kind == "dense":
        return "dense"
    assert isinstance(w, Int4Weight), linear.kind
    return (w.bits, w.group_size, w.mins is not None, w.super_scales is not None)


TINY_IDS = torch.randint(0, GGUF_TINY["vocab"], (24,), generator=torch.Generator().manual_seed(0)).tolist()


def test_gguf_types_load_packed_with_the_logits_of_their_float_expansion(tiny_ggufs, caplog):
    from llm.model import loader

    quantized, expanded = tiny_ggufs
    policy = WeightPolicy(CPU, torch.float32, cpu_weights="kernels")
    loader._warn_once.cache_clear()  # each warning is logged once per process
    with caplog.at_level(logging.INFO, logger=loader.__name__):
        model, _ = load_model(quantized, policy)
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "GGUF type IQ4_NL has no packed kernel: its tensors are expanded to float",
        "fused Q5_K + Q8_0 shards share no packed layout: expanded to float",
    ]
    assert any(
        "weights take" in r.getMessage() and "checkpoint file size" in r.getMessage() for r in caplog.records
    )
    layer0, layer1 = model.layers
    embedding = model.embed_tokens.table
    assert isinstance(embedding, Int4Weight) and (embedding.bits, embedding.group_size) == (6, 16)  # Q6_K
    assert layout(layer0.self_attn.qkv_proj) == (6, 16, True, True)  # Q4_K + Q4_K + Q6_K, widened exactly
    assert layout(layer0.self_attn.o_proj) == (5, 32, False, False)  # Q5_0
    assert layout(layer0.mlp.gate_up_proj) == (5, 32, True, False)  # Q5_1
    assert layout(layer0.mlp.down_proj) == (5, 32, True, True)  # Q5_K
    assert layout(layer1.mlp.gate_up_proj) == (4, 32, True, True)  # Q4_K
    for dense in (layer1.self_attn.qkv_proj, layer1.self_attn.o_proj, layer1.mlp.down_proj, model.lm_head):
        assert layout(dense) == "dense"

    expected = score(load_model(expanded, policy)[0], TINY_IDS, torch.float32)
    # The reference backend multiplies by the very float32 weights gguf computes: the same logits.
    torch.testing.assert_close(score(model, TINY_IDS, torch.float32), expected, atol=1e-6, rtol=1e-6)


def test_q5_0_and_q4_0_shards_beside_q8_0_stack_exactly_as_int8():
    """Gemma 3 Q4_K_M's fused q/k/v (Q5_0 q and k, Q8_0 v): one group-32 int8 weight of gguf's values."""
    from tests.kernels.gguf_cases import gguf_blocks, gguf_weights

    shards = [("Q5_0", (64, 256)), ("Q4_0", (32, 256)), ("Q8_0", (32, 256))]
    parts = [RawTensor(gguf_blocks(q, shape, seed=i), q, shape) for i, (q, shape) in enumerate(shards)]
    merged = merge_rows(parts)
    assert isinstance(merged, Int8Weight) and merged.group_size == 32
    expected = np.concatenate([gguf_weights(p.qtype, p.data, p.shape) for p in parts])
    assert torch.equal(dequantize(merged), torch.from_numpy(expected))


@needs_triton
def test_gguf_types_through_the_triton_kernels(tiny_ggufs):
    quantized, expanded = tiny_ggufs
    cpu = WeightPolicy(CPU, torch.float32, cpu_weights="kernels")
    expected = score(load_model(expanded, cpu)[0], TINY_IDS, torch.float32)
    with dispatch.use_backend("triton"):
        model, _ = load_model(quantized, replace(cpu, device=DEVICE))
        torch.testing.assert_close(
            score(model, TINY_IDS, torch.float32, DEVICE), expected, atol=2e-4, rtol=2e-4
        )


def test_gguf_types_packed_for_the_cpu(tiny_ggufs):
    quantized, expanded = tiny_ggufs
    model, _ = load_model(quantized, WeightPolicy(CPU, torch.bfloat16, cpu_weights="packed"))
    exact, _ = load_model(expanded, WeightPolicy(CPU, torch.float32, cpu_weights="dequantized"))
    layer0, layer1 = model.layers
    assert layer1.mlp.gate_up_proj.kind == "cpu_int4"  # Q4_K: torch's int4 matmul
    assert layer0.self_attn.qkv_proj.kind == "cpu_int8"  # 6 bits: requantized per channel
    down = layer1.mlp.down_proj  # BF16, already the policy's dtype: kept as stored
    assert down.kind == "dense" and torch.equal(down.weight, exact.layers[1].mlp.down_proj.weight.bfloat16())
    packed = score(model, TINY_IDS, torch.bfloat16)
    # bfloat16 activations alone move these log-probabilities by up to 0.04; the per-channel int8
    # requantization of the 5- and 6-bit weights and bfloat16 int4 scales by up to 0.1 in all.
    assert (packed - score(exact, TINY_IDS, torch.float32)).abs().max() < 0.2
