"""Every supported architecture against transformers, from both checkpoint formats, without downloads.

Each case is a tiny random-weight model built from the transformers config class (real head layout, GQA),
saved as a safetensors folder and written as a GGUF the way llama.cpp's converter lays it out. Its matrices go
through the GGUF storage type first, so both files hold the numbers transformers computes with: our greedy
tokens must be transformers' argmax at every step and our log-probabilities its own. One architecture also
runs on the Triton kernels (the CPU interpreter) against the reference backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from kernels import dispatch
from llm.base import ChatMessage, SamplingParams
from llm.config import EngineConfig
from llm.engine import LLMEngine, create_engine
from llm.tokenizer import Tokenizer
from tests.kernels.kernel_cases import needs_triton
from tests.llm.tiny_models import VOCAB, round_trip, save_folder, tiny_hf_model, write_gguf

NEW_TOKENS = 32
LOGPROB_ATOL = 1e-4
LLAMA3_ROPE = {
    "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}  # fmt: skip
LONGROPE = {
    "rope_type": "longrope",
    "short_factor": [1.0 + 0.1 * i for i in range(12)],  # rotary_dim 24 (0.75 of head_dim 32) / 2
    "long_factor": [2.0 + 0.3 * i for i in range(12)],
}
# name: (transformers family, config, GGUF matrix type, formats). Prompts (40 tokens) and answers (32) stay
# within Phi-3's original_max_position_embeddings (its short factors) and pass the 16-token sliding window.
CASES: dict[str, tuple[str, dict[str, Any], str, tuple[str, ...]]] = {
    "llama3.1-rope": (
        "LlamaForCausalLM",
        {"num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64, "rope_scaling": LLAMA3_ROPE},
        "Q8_0",
        ("safetensors", "gguf"),
    ),
    "qwen3-qk-norm": (  # head_dim 64 != hidden / heads
        "Qwen3ForCausalLM",
        {"num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64},
        "F16",
        ("safetensors", "gguf"),
    ),
    # 6 layers: 5 local (sliding window, local RoPE base) and 1 global (scaled RoPE). llama.cpp assumes
    # query_pre_attn_scalar == head_dim below 27B, so the GGUF case keeps it; the next case does not.
    "gemma3-local-global": (
        "Gemma3ForCausalLM",
        {
            "hidden_size": 64,
            "num_hidden_layers": 6,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 64,
            "sliding_window": 16,
            "query_pre_attn_scalar": 64,
            "final_logit_softcapping": 5.0,
            "rope_scaling": {"rope_type": "linear", "factor": 8.0},
            "tie_word_embeddings": True,
        },
        "Q8_0",
        ("safetensors", "gguf"),
    ),
    "gemma3-query-scalar": (
        "Gemma3ForCausalLM",
        {
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 32,
            "sliding_window": 16,
            "query_pre_attn_scalar": 48,
            "tie_word_embeddings": True,
            "layer_types": ["full_attention", "sliding_attention"],
        },
        "F32",
        ("safetensors",),
    ),
    # Every other layer sliding, one RoPE, scores capped by tanh: a cap of 0.5 (Gemma 2 ships 50.0) changes
    # every attention weight of these small random scores, so a model that ignored it would not match.
    # transformers' eager attention is the one that applies the cap.
    "gemma2-softcap": (
        "Gemma2ForCausalLM",
        {
            "hidden_size": 64,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 64,
            "sliding_window": 16,
            "query_pre_attn_scalar": 64,
            "attn_logit_softcapping": 0.5,
            "final_logit_softcapping": 5.0,
            "tie_word_embeddings": True,
            "attn_implementation": "eager",
        },
        "Q8_0",
        ("safetensors", "gguf"),
    ),
    "phi3-longrope-partial": (
        "Phi3ForCausalLM",
        {
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "partial_rotary_factor": 0.75,
            "original_max_position_embeddings": 128,
            "rope_scaling": LONGROPE,
            "pad_token_id": 0,
            "bos_token_id": 1,
            "eos_token_id": 1,
        },
        "F16",
        ("safetensors", "gguf"),
    ),
}
PARAMS = [(case, fmt) for case, (*_, formats) in CASES.items() for fmt in formats]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, tuple[Any, dict[str, Path]]]:
    """case -> (the transformers model, {format: path}), built once."""
    built = {}
    for case, (family, extra, qtype, formats) in CASES.items():
        # Weights 5x transformers' default spread: peaked next-token distributions, varied greedy answers.
        model = tiny_hf_model(family, {"initializer_range": 0.1, **extra}, random_norms=True)
        round_trip(model, qtype)
        folder = save_folder(model, tmp_path_factory.mktemp(case))
        paths = {"safetensors": folder}
        if "gguf" in formats:
            paths["gguf"] = write_gguf(model, folder.with_suffix(".gguf"), qtype)
        built[case] = (model, paths)
    return built


def engine_on(backend: str, model: Path) -> LLMEngine:
    with dispatch.use_backend(backend):
        engine, _, _ = create_engine(
            EngineConfig(
                model_path=model,
                dtype="float32",
                cpu_weights="dequantized",
                enforce_eager=True,
                block_size=16,
                num_kv_blocks=16,
                max_model_len=128,
            )
        )
    return engine


def greedy(
    engine: LLMEngine, backend: str, prompt: list[int], new_tokens: int
) -> tuple[list[int], list[float]]:
    with dispatch.use_backend(backend):
        params = SamplingParams(max_new_tokens=new_tokens, temperature=0.0)
        request = engine.generate([prompt], params, logprobs=0, ignore_eos=True)[0]
    return [s.token_id for s in request.token_logprobs], [s.logprob for s in request.token_logprobs]


def prompt(seed: int = 0) -> list[int]:
    return torch.randint(2, VOCAB, (40,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize(("case", "fmt"), PARAMS)
def test_greedy_tokens_and_logprobs_match_transformers(checkpoints, case, fmt):
    hf, paths = checkpoints[case]
    ids = prompt()
    tokens, logprobs = greedy(engine_on("reference", paths[fmt]), "reference", ids, NEW_TOKENS)
    assert len(tokens) == NEW_TOKENS
    with torch.no_grad():  # transformers' next-token distribution after the prompt and each of our tokens
        ref = hf(torch.tensor([ids + tokens])).logits[0, len(ids) - 1 : -1].float().log_softmax(-1)
    assert tokens == ref.argmax(-1).tolist()
    expected = ref.gather(1, torch.tensor(tokens)[:, None])[:, 0]
    torch.testing.assert_close(torch.tensor(logprobs), expected, atol=LOGPROB_ATOL, rtol=0)


@needs_triton
@pytest.mark.parametrize("case", ["gemma3-local-global", "gemma2-softcap"])
def test_gemma_on_triton_kernels_matches_reference(checkpoints, case):
    """q/k norms through the RMSNorm kernel (Gemma 3), per-layer sliding windows, the query scale and the
    scores' cap (Gemma 2) through the attention kernels, prefill and decode."""
    _, paths = checkpoints[case]
    ids = prompt(1)
    answers = {b: greedy(engine_on(b, paths["gguf"]), b, ids, 8) for b in ("reference", "triton")}
    assert answers["triton"][0] == answers["reference"][0]
    torch.testing.assert_close(
        torch.tensor(answers["triton"][1]), torch.tensor(answers["reference"][1]), atol=2e-4, rtol=0
    )


@pytest.mark.parametrize("fmt", ["safetensors", "gguf"])
def test_phi3_lora_on_fused_projections_matches_peft(checkpoints, fmt, tmp_path):
    """A PEFT adapter of Phi-3's own modules (the fused `qkv_proj` and `gate_up_proj`, `o_proj`, `down_proj`)
    served by the engine: the tokens and log-probabilities of transformers + peft, from both formats."""
    import copy

    from peft import LoraConfig, get_peft_model

    hf, paths = checkpoints["phi3-longrope-partial"]
    torch.manual_seed(1)
    targets = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    adapted = get_peft_model(copy.deepcopy(hf), LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if "lora_B" in name:  # zero at initialization: the adapter would change nothing
                parameter.normal_(0.0, 0.5)
    adapted.save_pretrained(tmp_path / "phi3-lora")
    adapted.eval()
    engine, _, _ = create_engine(
        EngineConfig(model_path=paths[fmt], dtype="float32", cpu_weights="dequantized", enforce_eager=True,
                     block_size=16, num_kv_blocks=16, max_model_len=128, adapters=(tmp_path / "phi3-lora",))
    )  # fmt: skip
    ids = prompt(2)
    params = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0.0)
    base, lora = engine.generate([ids, ids], params, logprobs=0, ignore_eos=True, adapters=[0, 1])
    tokens = [s.token_id for s in lora.token_logprobs]
    assert tokens != [s.token_id for s in base.token_logprobs]
    with torch.no_grad():
        ref = adapted(torch.tensor([ids + tokens])).logits[0, len(ids) - 1 : -1].float().log_softmax(-1)
    assert tokens == ref.argmax(-1).tolist()
    expected = ref.gather(1, torch.tensor(tokens)[:, None])[:, 0]
    torch.testing.assert_close(
        torch.tensor([s.logprob for s in lora.token_logprobs]), expected, atol=LOGPROB_ATOL, rtol=0
    )


@pytest.mark.parametrize("long", [False, True])
def test_longrope_frequencies_match_transformers(long):
    """Short factors for contexts within original_max_position_embeddings, long ones beyond (chosen by the
    table's length, as llama.cpp does by its context size), and the attention factor."""
    from transformers import Phi3Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from llm.layers.rotary import inverse_frequencies
    from llm.model.presets import config_from_hf

    _, extra, _, _ = CASES["phi3-longrope-partial"]
    hf = Phi3Config(
        hidden_size=128, num_hidden_layers=2, vocab_size=VOCAB, max_position_embeddings=512, **extra
    )
    theirs, their_factor = ROPE_INIT_FUNCTIONS["longrope"](hf, "cpu", seq_len=129 if long else 72)
    cfg = config_from_hf({**hf.to_dict(), "architectures": ["Phi3ForCausalLM"]}, "phi3")
    ours, our_factor = inverse_frequencies(
        cfg.rotary_dim, cfg.rope_theta, cfg.rope_scaling, 256 if long else 128
    )
    torch.testing.assert_close(ours.float(), theirs, rtol=1e-6, atol=0)
    assert our_factor == pytest.approx(their_factor)


class _Backend:
    """Just enough of a `tokenizers.Tokenizer` for chat rendering (no special tokens)."""

    def token_to_id(self, token: str) -> None:
        return None


def chat_tokenizer(template: str) -> Tokenizer:
    return Tokenizer(_Backend(), bos_token=None, eos_token=None, add_bos=False, chat_template=template)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "template",
    [
        # Gemma's: raises on a system message.
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}",
        # Mistral v0.1's: only alternating user/assistant turns, no system role anywhere.
        "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('roles must alternate') }}{% endif %}<{{ m['role'] }}>{{ m['content'] }}\n"
        "{% endfor %}",
    ],
)
def test_system_prompt_folds_into_first_user_turn_without_a_system_role(template):
    tokenizer = chat_tokenizer(template)
    messages = [
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "Hi"),
        ChatMessage("assistant", "Hello"),
    ]
    assert tokenizer.render_chat(messages) == "<user>Be brief.\n\nHi\n<assistant>Hello\n"
    assert tokenizer.render_chat(messages[1:]) == "<user>Hi\n<assistant>Hello\n"


def test_template_with_a_system_role_keeps_it():
    tokenizer = chat_tokenizer(
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}{# system #}"
    )
    messages = [ChatMessage("system", "Be brief."), ChatMessage("user", "Hi")]
    assert tokenizer.render_chat(messages) == "<system>Be brief.\n<user>Hi\n"


def test_a_tensor_the_family_lacks_is_a_clear_error(checkpoints, tmp_path):
    """Qwen3's q/k norms in a checkpoint that says it is a Llama: refused, naming the file and the tensor."""
    import json
    import shutil

    from llm.layers.linear import WeightPolicy
    from llm.model.loader import load_model
    from llm.model.presets import UnsupportedModelError

    folder = shutil.copytree(checkpoints["qwen3-qk-norm"][1]["safetensors"], tmp_path / "mislabelled")
    config = json.loads((folder / "config.json").read_text())
    config.update(architectures=["LlamaForCausalLM"], model_type="llama")
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        UnsupportedModelError, match=r"mislabelled: unexpected tensor '.*_norm\.weight' for a llama"
    ):
        load_model(folder, WeightPolicy(torch.device("cpu"), torch.float32, cpu_weights="dequantized"))


def vocabulary_tokenizer(*tokens: str) -> Tokenizer:
    """A tokenizer of a file without a chat template whose vocabulary holds `tokens` (as special tokens)."""
    from tokenizers import AddedToken, models
    from tokenizers import Tokenizer as Backend

    backend = Backend(models.WordLevel({"[UNK]": 0, "hello": 1}, unk_token="[UNK]"))
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in tokens])
    return Tokenizer(backend, bos_token=None, eos_token=None, add_bos=False, chat_template=None)


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        (
            ("<start_of_turn>", "<end_of_turn>"),
            "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n"
            "<start_of_turn>model\n",
        ),
        (
            ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
            "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user"
            "<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHello<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
        ),
        (
            ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
            "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello<|end|>\n<|assistant|>\n",
        ),
        (
            ("<|im_start|>", "<|im_end|>"),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
            "Hello<|im_end|>\n<|im_start|>assistant\n",
        ),
        (
            (),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
            "Hello<|im_end|>\n<|im_start|>assistant\n",
        ),
    ],
    ids=["gemma", "llama3", "phi3", "chatml", "none"],
)
def test_a_file_without_a_template_gets_its_familys_chat_format(tokens, expected):
    """A base model's file often has no chat template: its turn tokens pick the family's format (Gemma's
    without a system role, so the system prompt opens the user turn), ChatML where none is known."""
    tokenizer = vocabulary_tokenizer(*tokens)
    messages = [
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "Hi"),
        ChatMessage("assistant", "Hello"),
    ]
    assert tokenizer.render_chat(messages) == expected
    if tokens:
        # The turn markers are single special tokens, not text the model never saw.
        rendered = tokenizer.render_chat(messages[1:2])
        used = [tokenizer.backend.token_to_id(token) for token in tokens if token in rendered]
        assert used and set(used) <= set(tokenizer.encode(rendered))


@pytest.mark.parametrize("cap", ["attn_logit_softcapping", "final_logit_softcapping"])
@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), (0, None), (0.0, None), (50, 50.0), (-1.0, "error"), ("50", "error")],
)
def test_logit_caps_are_read_as_none_or_a_positive_number(cap, value, expected):
    """Gemma's soft caps from config.json and GGUF metadata: absent or 0 is no cap; a negative or non-number
    one is refused naming the key (a cap of 0 applied would make every score NaN)."""
    from llm.model.presets import UnsupportedModelError, config_from_gguf, config_from_hf

    _, extra, _, _ = CASES["gemma2-softcap"]
    hf = {**extra, "architectures": ["Gemma2ForCausalLM"], "vocab_size": VOCAB, "intermediate_size": 128}
    meta = {
        "general.architecture": "gemma2", "gemma2.attention.head_count": 4, "gemma2.embedding_length": 64,
        "gemma2.block_count": 4, "gemma2.context_length": 128, "gemma2.feed_forward_length": 128,
        "gemma2.attention.layer_norm_rms_epsilon": 1e-6, "gemma2.vocab_size": VOCAB,
    }  # fmt: skip
    hf.pop("attn_logit_softcapping")
    hf.pop("final_logit_softcapping")
    hf[cap], meta[f"gemma2.{cap}"] = value, value
    readers = {
        f"cfg: {cap}": lambda: config_from_hf(hf, "cfg"),
        f"cfg.gguf: gemma2.{cap}": lambda: config_from_gguf(meta, "cfg.gguf", False, {}),
    }
    for named, read in readers.items():
        if expected == "error":
            with pytest.raises(UnsupportedModelError, match=f"{named} must be a positive number"):
                read()
        else:
            assert getattr(read(), cap) == expected
