"""LoRA adapters, served unmerged and with the default adapter merged into the weights: parity with peft +
transformers on the real SmolLM2 GGUF, mixed batches, the prefix cache kept per adapter, the PEFT files our
training loop writes, and adapters that do not fit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llm.base import ChatMessage, SamplingParams
from llm.config import EngineConfig
from llm.lora.adapter import AdapterError, load_adapter, save_adapter
from llm.lora.train import TrainConfig, TrainExample, group_loss, train_lora, trained_weights
from tests.llm.bf16_compare import assert_same_or_near_tie

pytestmark = pytest.mark.slow

PROMPTS = ["Explain in detail how a steam engine works.", "请详细解释一下太阳系的八大行星。"]
NEW_TOKENS = 12
LOGPROB_ATOL = 1e-3  # as the base model's parity test: float32 summation order only


@pytest.fixture(scope="module")
def peft_model(gguf_path, tmp_path_factory):
    """transformers + peft with a random rank-8 adapter on all seven projections (B non-zero, so the
    adapter changes the output), saved in the PEFT format."""
    from peft import LoraConfig, get_peft_model

    from llm.hf import load_causal_lm

    torch.manual_seed(0)
    base = load_causal_lm(gguf_path)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=targets, lora_dropout=0.0))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.02)
    folder = tmp_path_factory.mktemp("adapters") / "random8"
    model.save_pretrained(folder)
    return model.eval(), folder


@pytest.fixture(scope="module", params=["unmerged", "merged"])
def adapted_engine(gguf_path, peft_model, request):
    """The adapter in slot 1, served unmerged or as the default adapter merged into the base weights (then
    the base model, slot 0, is the one carrying a delta)."""
    from llm.engine import create_engine

    _, folder = peft_model
    config = EngineConfig(
        model_path=gguf_path,
        cpu_weights="dequantized",
        num_kv_blocks=256,
        max_model_len=1024,
        enforce_eager=True,
        adapters=(folder,),
        default_adapter=folder.name if request.param == "merged" else None,
    )
    engine, tokenizer, _ = create_engine(config)
    assert engine.runner.lora.merged == (1 if request.param == "merged" else None)
    return engine, tokenizer


def _reference_logprobs(model, ids, completion):
    full = torch.tensor([ids + completion])
    with torch.no_grad():
        return model(full).logits[0, len(ids) - 1 : -1].float().log_softmax(-1)


def test_adapter_matches_peft_and_mixed_batches_keep_each_request_apart(peft_model, adapted_engine):
    model, _ = peft_model
    engine, tokenizer = adapted_engine
    prompts = [tokenizer.apply_chat_template([ChatMessage("user", p)]) for p in PROMPTS]
    # One batch: every prompt once with the adapter (slot 1) and once without (slot 0).
    requests = engine.generate(
        prompts + prompts, SamplingParams(max_new_tokens=NEW_TOKENS), logprobs=5, adapters=[1, 1, 0, 0]
    )
    for index, request in enumerate(requests):
        adapted = index < len(prompts)
        ids = prompts[index % len(prompts)]
        completion = request.seq.completion_token_ids
        if adapted:
            ref = _reference_logprobs(model, ids, completion)
        else:
            with model.disable_adapter():
                ref = _reference_logprobs(model, ids, completion)
        assert ref.argmax(-1).tolist() == completion  # greedy tokens agree
        for step, sample in enumerate(request.token_logprobs):
            top_lp, top_ids = ref[step].topk(5)
            assert [i for i, _ in sample.top_logprobs] == top_ids.tolist()
            np.testing.assert_allclose(
                [lp for _, lp in sample.top_logprobs], top_lp.numpy(), atol=LOGPROB_ATOL
            )
    # The adapter does change the model: well beyond the tolerance, in the same batch.
    adapted, base = requests[0].token_logprobs[0].top_logprobs, requests[2].token_logprobs[0].top_logprobs
    assert max(abs(a[1] - b[1]) for a, b in zip(adapted, base, strict=True)) > 50 * LOGPROB_ATOL


def test_prefix_cache_never_shares_blocks_between_adapters(adapted_engine):
    engine, tokenizer = adapted_engine
    bm = engine.block_manager
    # A system message no other test uses, so that no block of this prompt is cached yet.
    messages = [ChatMessage("system", "You count. " * 8), ChatMessage("user", "Count from one to fifty.")]
    prompt = tokenizer.apply_chat_template(messages)
    params = SamplingParams(max_new_tokens=2)

    def cached_tokens(adapter: int) -> int:
        before = bm.prefix_hit_tokens
        engine.generate([prompt], params, adapters=[adapter])
        return bm.prefix_hit_tokens - before

    assert cached_tokens(0) == 0
    assert cached_tokens(1) == 0  # same tokens, other adapter: computed afresh
    assert cached_tokens(1) > 0
    assert cached_tokens(0) > 0


def test_merged_default_adapter_on_packed_weights(gguf_path, peft_model):
    """The product's setup: int4 weights packed for the CPU, the default adapter merged. The linears it adapts
    become dense, a step on the default adapter alone runs without a LoRA mask, and the merged engine decodes
    like the unmerged one for the adapter and the base model in one batch (bfloat16: near ties may part)."""
    from llm.engine import create_engine

    _, folder = peft_model
    engines = {
        merge: create_engine(
            EngineConfig(
                model_path=gguf_path, num_kv_blocks=128, max_model_len=512, enforce_eager=True,
                adapters=(folder,), default_adapter=folder.name, merge_default_adapter=merge,
            )
        )[:2]
        for merge in (False, True)
    }  # fmt: skip
    merged_engine, tokenizer = engines[True]
    kinds = {merge: e.runner.model.layers[0].self_attn.qkv_proj.kind for merge, (e, _) in engines.items()}
    assert kinds == {False: "cpu_int4", True: "dense"}
    assert merged_engine.runner._lora_mask([1, 1]) is None
    assert merged_engine.runner._lora_mask([1, 0]).tolist() == [[0.0], [1.0]]
    prompts = [tokenizer.apply_chat_template([ChatMessage("user", p)]) for p in PROMPTS]
    params = SamplingParams(max_new_tokens=NEW_TOKENS)
    runs = {
        merge: engine.generate(prompts * 2, params, logprobs=5, adapters=[1, 1, 0, 0])
        for merge, (engine, _) in engines.items()
    }
    agreed = [assert_same_or_near_tie(a, b) for a, b in zip(runs[True], runs[False], strict=True)]
    assert sum(agreed) >= NEW_TOKENS  # the paths agree for a good stretch, not just one token


def test_generator_resolves_adapter_names(adapted_engine):
    from llm.base import NO_ADAPTER, UnknownAdapterError
    from llm.engine.generator import EngineGenerator

    engine, tokenizer = adapted_engine
    name = next(iter(engine.adapter_slots))
    generator = EngineGenerator(engine, tokenizer, "test", default_adapter=name)
    try:
        assert generator.adapters == (name,)
        assert generator.adapter_slot(None) == 1
        assert generator.adapter_slot(NO_ADAPTER) == 0
        with pytest.raises(UnknownAdapterError, match="unknown adapter 'nope'"):
            generator.stream([ChatMessage("user", "hi")], SamplingParams(adapter="nope"))
    finally:
        generator.shutdown()


def test_trained_adapter_is_a_peft_adapter(gguf_path, tmp_path):
    """Our training loop's output loads in peft and gives the logits of the model it was trained in."""
    from peft import PeftModel

    from llm.hf import load_causal_lm

    model = load_causal_lm(gguf_path)
    config = TrainConfig(rank=4, alpha=8.0, batch_size=2, learning_rate=5e-3)
    example = TrainExample(list(range(200, 240)), [300, 301, 302])
    cpu = torch.device("cpu")
    with torch.no_grad():
        before = float(group_loss(model, [example], cpu))
    wrapped = train_lora(model, [[example]] * 4, config)
    with torch.no_grad():
        after = float(group_loss(model, [example], cpu))
    assert after < before  # it learned the target
    folder = save_adapter(tmp_path / "trained", trained_weights(wrapped), rank=4, alpha=8.0, base_model="x")
    assert json.loads((folder / "adapter_config.json").read_text())["r"] == 4
    ids = torch.tensor([example.prompt_ids])
    # Compared in float32 on the same base weights (training held them in bfloat16): what differs is only
    # the float16 the adapter file stores its factors in.
    same_base = load_causal_lm(gguf_path).to(model.dtype).to(torch.float32)
    with torch.no_grad():
        ours = model.to(torch.float32)(ids).logits
        theirs = PeftModel.from_pretrained(same_base, folder)(ids).logits
    assert torch.allclose(ours, theirs, atol=1e-2)
    assert len(load_adapter(folder).weights) == 7 * model.config.num_hidden_layers


def test_training_goes_on_from_a_saved_adapter(gguf_path, tmp_path):
    """A saved adapter, loaded to go on training, starts where it stopped (to the float16 of its file), and
    one of another rank is refused with the projection named."""
    from dataclasses import replace

    from llm.hf import load_causal_lm

    config = TrainConfig(rank=4, alpha=8.0, batch_size=1, learning_rate=5e-3)
    example = TrainExample(list(range(200, 240)), [300, 301, 302])
    cpu = torch.device("cpu")
    model = load_causal_lm(gguf_path)
    with torch.no_grad():
        before = float(group_loss(model, [example], cpu))
    wrapped = train_lora(model, [[example]] * 3, config)
    with torch.no_grad():
        trained = float(group_loss(model, [example], cpu))
    folder = save_adapter(tmp_path / "first", trained_weights(wrapped), rank=4, alpha=8.0, base_model="x")
    initial = load_adapter(folder).unscaled_weights()
    again = load_causal_lm(gguf_path)
    train_lora(again, [[example]], replace(config, learning_rate=0.0), initial=initial)  # no step moves it
    with torch.no_grad():
        resumed = float(group_loss(again, [example], cpu))
    assert before > 5.0 and resumed == pytest.approx(trained, abs=0.05)  # it learned the target, and kept it
    with pytest.raises(ValueError, match="layer 0 q_proj"):
        train_lora(load_causal_lm(gguf_path), [[example]], replace(config, rank=8), initial=initial)


def test_a_packed_group_scores_like_separate_passes(gguf_path):
    """Examples sharing a prompt prefix, packed into one pass, get the loss of one pass each."""
    from llm.hf import load_causal_lm

    model = load_causal_lm(gguf_path)
    prefix = list(range(1000, 1050))
    group = [
        TrainExample(prefix + [7, 8, 9], [20, 21]),
        TrainExample(prefix + [11], [30, 31, 32]),
        TrainExample(prefix + [7, 12], [40]),
    ]
    cpu = torch.device("cpu")
    with torch.no_grad():
        packed = float(group_loss(model, group, cpu))
        separate = sum(float(group_loss(model, [example], cpu)) for example in group)
    assert packed == pytest.approx(separate, rel=1e-4)


def test_bad_adapters_are_refused_with_the_file_named(tmp_path, gguf_path):
    with pytest.raises(AdapterError, match="not a LoRA adapter folder"):
        load_adapter(tmp_path)
    folder = save_adapter(
        tmp_path / "head", {(0, "q_proj"): (torch.zeros(2, 576), torch.zeros(576, 2))}, rank=2, alpha=2,
        base_model="x",
    )  # fmt: skip
    from safetensors.torch import save_file

    save_file(
        {"base_model.model.lm_head.lora_A.weight": torch.zeros(2, 576)},
        str(folder / "adapter_model.safetensors"),
    )
    with pytest.raises(AdapterError, match="adapter_model.safetensors"):
        load_adapter(folder)
    wrong = save_adapter(
        tmp_path / "wrong", {(0, "q_proj"): (torch.zeros(2, 100), torch.zeros(576, 2))}, rank=2, alpha=2,
        base_model="x",
    )  # fmt: skip
    from llm.engine import create_engine

    with pytest.raises(AdapterError, match="layer 0 q_proj maps 100"):
        create_engine(
            EngineConfig(model_path=gguf_path, num_kv_blocks=8, enforce_eager=True, adapters=(wrong,))
        )
