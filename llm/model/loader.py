"""Loading a checkpoint: one weight loop fed by a source (GGUF or safetensors) and that source's name map.

A source lists tensor names and reads each as a `RawTensor`: for GGUF, the file's own quantized blocks
(memory-mapped, never expanded to float unless the type has no packed kernel); for safetensors, the float
tensor. The name map routes every source name to a module of `LlamaForCausalLM`, a parameter and, for fused
projections, a shard (q/k/v, gate/up); row shards are concatenated *in their stored format* and handed to the
module once all have arrived; a checkpoint that stores a fused projection whole (Phi-3) fills it at once.
GGUF's q/k row permutation (llama.cpp reorders the rows of each head for its interleaved RoPE) is undone
here, on the raw rows, and nowhere else; so is the offset Hugging Face Gemma leaves out of its norm weights.
Tied embeddings are one table: the embedding reads its rows from the output head's packed weight whenever
the head keeps the stored values (`Linear.exact_table`), instead of holding a second copy of the vocabulary.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from kernels.layout import (
    GGUF_BLOCK,
    Int4Weight,
    Int8Weight,
    concat_rows,
    repack_q4_0,
    repack_q4_1,
    repack_q4_k,
    repack_q5_0,
    repack_q5_1,
    repack_q5_k,
    repack_q6_k,
    repack_q8_0,
)
from llm.layers.linear import Embedding, Linear, Weight, WeightPolicy, weight_nbytes
from llm.layers.norm import RMSNorm
from llm.model.gguf_file import GGUFFile
from llm.model.llama import LlamaForCausalLM
from llm.model.presets import ModelConfig, UnsupportedModelError, config_from_gguf, config_from_hf

log = logging.getLogger(__name__)

# GGML types kept packed (`kernels.layout`); any other quantized type is expanded to float at load.
_REPACK: dict[str, Callable[[Any, tuple[int, int]], Int4Weight | Int8Weight]] = {
    "Q4_0": repack_q4_0,
    "Q4_1": repack_q4_1,
    "Q5_0": repack_q5_0,
    "Q5_1": repack_q5_1,
    "Q4_K": repack_q4_k,
    "Q5_K": repack_q5_k,
    "Q6_K": repack_q6_k,
    "Q8_0": repack_q8_0,
}
_FLOAT_TYPES = {"F32", "F16", "BF16"}


@dataclass
class RawTensor:
    """A tensor as stored: `data` is (rows, bytes per row) uint8 blocks for quantized types (and for GGUF
    BF16, which gguf hands out as raw bytes), else floats."""

    data: np.ndarray | torch.Tensor
    qtype: str  # "F32", "F16", "BF16", "Q4_0", "Q4_K", ... (a GGML type name)
    shape: tuple[int, ...]  # logical (out_features, in_features) or (n,)

    def dense(self) -> torch.Tensor:
        """A float type's values in their stored dtype (a copy: GGUF data is a read-only memory map)."""
        data = self.data if isinstance(self.data, torch.Tensor) else torch.from_numpy(np.array(self.data))
        if self.qtype == "BF16" and data.dtype == torch.uint8:
            data = data.view(torch.bfloat16)
        return data.reshape(self.shape)

    def to_float(self) -> torch.Tensor:
        """float32 values; quantized types through gguf's own dequantization (the one place a quantized
        tensor is expanded to float)."""
        if self.qtype in _FLOAT_TYPES:
            return self.dense().float()
        from gguf import GGMLQuantizationType, quants

        values = quants.dequantize(np.asarray(self.data), GGMLQuantizationType[self.qtype])
        return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).reshape(self.shape)


def unpermute_rows(data: np.ndarray | torch.Tensor, num_heads: int) -> np.ndarray | torch.Tensor:
    """Undo llama.cpp's q/k permutation: per head, rows (pair, half) -> (half, pair), back to rotate-half.

    llama.cpp's converter applies `w.reshape(heads, 2, hd // 2, ...).swapaxes(1, 2)`; this is its inverse. It
    moves whole rows, so it works on quantized block rows as well as on floats.
    """
    rows = data.shape[0]
    grouped = data.reshape(num_heads, rows // num_heads // 2, 2, *data.shape[1:])
    if isinstance(grouped, torch.Tensor):
        return grouped.transpose(1, 2).reshape(data.shape)
    return grouped.swapaxes(1, 2).reshape(data.shape)


def merge_rows(parts: list[RawTensor]) -> Weight:
    """Concatenate row shards: packed types stay packed (shards of different types in one layout that holds
    each exactly, see `concat_rows`), float types keep their dtype, anything else is expanded to float32."""
    qtypes = sorted({p.qtype for p in parts})
    if all(q in _FLOAT_TYPES for q in qtypes):
        return torch.cat([p.dense() for p in parts]) if len(parts) > 1 else parts[0].dense()
    if all(q in _REPACK for q in qtypes):
        shards = [_REPACK[p.qtype](p.data, (p.shape[0], p.shape[1])) for p in parts]
        packed = concat_rows(shards) or concat_rows([_exact_int8(w) for w in shards])
        if packed is not None:
            return packed
    unpackable = [q for q in qtypes if q not in _REPACK and q not in _FLOAT_TYPES]
    for qtype in unpackable:
        _warn_once(f"GGUF type {qtype} has no packed kernel: its tensors are expanded to float")
    if not unpackable:
        _warn_once(f"fused {' + '.join(qtypes)} shards share no packed layout: expanded to float")
    return torch.cat([p.to_float() for p in parts]) if len(parts) > 1 else parts[0].to_float()


def _exact_int8(w: Int4Weight | Int8Weight) -> Int4Weight | Int8Weight:
    """A symmetric group-32 weight with float scales (Q4_0, Q5_0) as the group-32 int8 weight it equals
    exactly (q minus its zero point, same scales), so that it stacks with Q8_0 shards (Gemma 3 Q4_K_M: Q5_0
    q and k beside a Q8_0 v); any other weight as it is."""
    if not isinstance(w, Int4Weight) or w.mins is not None or w.super_scales is not None:
        return w
    if w.group_size != GGUF_BLOCK:  # Q6_K's group 16 does not fit int8's group 32
        return w
    q = (w.values().to(torch.int16) - w.zero_point).to(torch.int8)
    return Int8Weight(q, w.scales, GGUF_BLOCK, w.in_features, w.out_features)


@cache
def _warn_once(message: str) -> None:
    log.warning(message)


@dataclass(frozen=True)
class NameRule:
    """Source names matching `pattern` go to module `target` (groups substituted), parameter and shard."""

    pattern: str
    target: str
    param: str = "weight"
    shard: str | None = None
    permute: str | None = None  # "heads" / "kv_heads": GGUF q/k rows to unpermute (if the preset says so)
    when: str | None = None  # a boolean `ArchPreset` field the rule needs (rules are tried in order)


_LAYER = r"(?P<i>\d+)"
GGUF_NAMES = [
    NameRule(r"token_embd\.weight", "embed_tokens"),
    NameRule(r"output_norm\.weight", "norm"),
    NameRule(r"output\.weight", "lm_head"),
    NameRule(rf"blk\.{_LAYER}\.attn_norm\.weight", "layers.{i}.input_layernorm"),
    NameRule(rf"blk\.{_LAYER}\.ffn_norm\.weight", "layers.{i}.post_attention_layernorm"),
    NameRule(rf"blk\.{_LAYER}\.post_attention_norm\.weight", "layers.{i}.attn_output_norm"),
    NameRule(rf"blk\.{_LAYER}\.post_ffw_norm\.weight", "layers.{i}.mlp_output_norm"),
    NameRule(rf"blk\.{_LAYER}\.attn_(?P<n>q|k)_norm\.weight", "layers.{i}.self_attn.{n}_norm"),
    NameRule(rf"blk\.{_LAYER}\.attn_qkv\.(?P<p>weight|bias)", "layers.{i}.self_attn.qkv_proj", "{p}"),
    NameRule(
        rf"blk\.{_LAYER}\.attn_q\.(?P<p>weight|bias)", "layers.{i}.self_attn.qkv_proj", "{p}", "q", "heads"
    ),
    NameRule(
        rf"blk\.{_LAYER}\.attn_k\.(?P<p>weight|bias)", "layers.{i}.self_attn.qkv_proj", "{p}", "k", "kv_heads"
    ),
    NameRule(rf"blk\.{_LAYER}\.attn_v\.(?P<p>weight|bias)", "layers.{i}.self_attn.qkv_proj", "{p}", "v"),
    NameRule(rf"blk\.{_LAYER}\.attn_output\.weight", "layers.{i}.self_attn.o_proj"),
    NameRule(rf"blk\.{_LAYER}\.ffn_gate\.weight", "layers.{i}.mlp.gate_up_proj", shard="gate"),
    NameRule(rf"blk\.{_LAYER}\.ffn_up\.weight", "layers.{i}.mlp.gate_up_proj", when="fused_gate_up"),
    NameRule(rf"blk\.{_LAYER}\.ffn_up\.weight", "layers.{i}.mlp.gate_up_proj", shard="up"),
    NameRule(rf"blk\.{_LAYER}\.ffn_down\.weight", "layers.{i}.mlp.down_proj"),
]
HF_NAMES = [
    NameRule(r"model\.embed_tokens\.weight", "embed_tokens"),
    NameRule(r"model\.norm\.weight", "norm"),
    NameRule(r"lm_head\.weight", "lm_head"),
    NameRule(rf"model\.layers\.{_LAYER}\.input_layernorm\.weight", "layers.{i}.input_layernorm"),
    # Gemma names the norm on the attention output what Llama names the norm before the MLP.
    NameRule(
        rf"model\.layers\.{_LAYER}\.post_attention_layernorm\.weight",
        "layers.{i}.attn_output_norm",
        when="sandwich_norms",
    ),
    NameRule(
        rf"model\.layers\.{_LAYER}\.post_attention_layernorm\.weight", "layers.{i}.post_attention_layernorm"
    ),
    NameRule(
        rf"model\.layers\.{_LAYER}\.pre_feedforward_layernorm\.weight", "layers.{i}.post_attention_layernorm"
    ),
    NameRule(rf"model\.layers\.{_LAYER}\.post_feedforward_layernorm\.weight", "layers.{i}.mlp_output_norm"),
    NameRule(
        rf"model\.layers\.{_LAYER}\.self_attn\.(?P<n>q|k)_norm\.weight", "layers.{i}.self_attn.{n}_norm"
    ),
    NameRule(
        rf"model\.layers\.{_LAYER}\.self_attn\.qkv_proj\.(?P<p>weight|bias)",
        "layers.{i}.self_attn.qkv_proj",
        "{p}",
    ),
    *(
        NameRule(
            rf"model\.layers\.{_LAYER}\.self_attn\.{s}_proj\.(?P<p>weight|bias)",
            "layers.{i}.self_attn.qkv_proj",
            "{p}",
            s,
        )
        for s in ("q", "k", "v")
    ),
    NameRule(rf"model\.layers\.{_LAYER}\.self_attn\.o_proj\.weight", "layers.{i}.self_attn.o_proj"),
    NameRule(
        rf"model\.layers\.{_LAYER}\.mlp\.gate_proj\.weight", "layers.{i}.mlp.gate_up_proj", shard="gate"
    ),
    NameRule(rf"model\.layers\.{_LAYER}\.mlp\.up_proj\.weight", "layers.{i}.mlp.gate_up_proj", shard="up"),
    NameRule(rf"model\.layers\.{_LAYER}\.mlp\.gate_up_proj\.weight", "layers.{i}.mlp.gate_up_proj"),
    NameRule(rf"model\.layers\.{_LAYER}\.mlp\.down_proj\.weight", "layers.{i}.mlp.down_proj"),
]
# Fused modules wait for all their shards, in this order (rows are concatenated).
SHARD_ORDER = {"qkv_proj": ("q", "k", "v"), "gate_up_proj": ("gate", "up")}
# GGUF tensors of per-frequency RoPE divisors: read with the config (`config_from_gguf`), not as weights.
ROPE_FACTOR_TENSORS = ("rope_freqs", "rope_factors_short", "rope_factors_long")
# Names a source may hold that carry nothing for the weight loop.
IGNORED = re.compile(rf".*(rotary_emb\.inv_freq|({'|'.join(ROPE_FACTOR_TENSORS)})\.weight)$")


class WeightSource(Protocol):
    path: Path
    name_rules: list[NameRule]
    folds_norm_offset: bool  # norm weights already include the preset's `norm_weight_offset`

    def model_config(self) -> ModelConfig: ...

    def names(self) -> Iterator[str]: ...

    def read(self, name: str) -> RawTensor: ...


class GGUFSource:
    name_rules = GGUF_NAMES
    folds_norm_offset = True  # llama.cpp's converter adds Gemma's 1 to its norm weights

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.file = GGUFFile(path)
        except (OSError, ValueError) as exc:
            raise UnsupportedModelError(f"{path}: not a readable GGUF file ({exc})") from exc
        self.tensors = self.file.tensors

    def metadata(self, *, skip: tuple[str, ...] = ("tokenizer.ggml.",)) -> dict[str, Any]:
        """Scalar and string metadata (the large tokenizer arrays are read by the tokenizer only)."""
        return {k: v for k, v in self.file.fields.items() if not k.startswith(skip)}

    def field(self, key: str) -> Any:
        return self.file.fields.get(key)

    def model_config(self) -> ModelConfig:
        meta = self.metadata()
        if "general.architecture" in meta and f"{meta['general.architecture']}.vocab_size" not in meta:
            meta["tokenizer.ggml.tokens"] = self.field("tokenizer.ggml.tokens")
        rope_factors = {
            name: self.read(f"{name}.weight").to_float().flatten().tolist()
            for name in ROPE_FACTOR_TENSORS
            if f"{name}.weight" in self.tensors
        }
        return config_from_gguf(
            meta, self.path, has_output_weight="output.weight" in self.tensors, rope_factors=rope_factors
        )

    def names(self) -> Iterator[str]:
        return iter(self.tensors)

    def read(self, name: str) -> RawTensor:
        t = self.tensors[name]
        return RawTensor(t.data, t.qtype, t.shape)


class SafetensorsSource:
    name_rules = HF_NAMES
    folds_norm_offset = False
    _QTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}

    def __init__(self, path: Path) -> None:
        from safetensors import safe_open

        self.path = path
        config_path = path / "config.json"
        files = sorted(path.glob("*.safetensors"))
        if not config_path.is_file() or not files:
            raise UnsupportedModelError(
                f"{path}: a safetensors model folder needs config.json and *.safetensors"
            )
        self.hf_config = json.loads(config_path.read_text())
        self._files = {}
        for file in files:
            handle = safe_open(str(file), framework="pt")
            for name in handle.keys():  # safe_open handles are not iterable
                self._files[name] = handle

    def model_config(self) -> ModelConfig:
        return config_from_hf(self.hf_config, self.path)

    def names(self) -> Iterator[str]:
        return iter(self._files)

    def read(self, name: str) -> RawTensor:
        t = self._files[name].get_tensor(name)
        if t.dtype not in self._QTYPES:
            raise UnsupportedModelError(f"{self.path}: tensor {name} has unsupported dtype {t.dtype}")
        return RawTensor(t, self._QTYPES[t.dtype], tuple(t.shape))


def open_source(path: str | Path) -> GGUFSource | SafetensorsSource:
    path = Path(path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return GGUFSource(path)
    if path.is_dir():
        return SafetensorsSource(path)
    if not path.exists():
        raise UnsupportedModelError(
            f"{path}: no such model file or folder (expected a .gguf file or a folder "
            "with config.json and *.safetensors)"
        )
    raise UnsupportedModelError(f"{path}: not a .gguf file or a safetensors model folder")


def load_weights(model: LlamaForCausalLM, source: WeightSource, policy: WeightPolicy) -> None:
    """The one loading loop: route, unpermute, gather shards, hand each complete weight to its module."""
    cfg = model.config
    rules = [
        (re.compile(r.pattern + "$"), r)
        for r in source.name_rules
        if r.when is None or getattr(cfg.preset, r.when)
    ]
    norm_offset = 0.0 if source.folds_norm_offset else cfg.preset.norm_weight_offset

    def unexpected(name: str) -> UnsupportedModelError:
        return UnsupportedModelError(
            f"{source.path}: unexpected tensor {name!r} for a {cfg.preset.name} model"
        )

    heads = {"heads": cfg.num_heads, "kv_heads": cfg.num_kv_heads}
    pending: dict[tuple[str, str], dict[str | None, RawTensor]] = {}
    loaded: set[str] = set()
    embedding: Weight | None = None
    for name in source.names():
        match = next(((m, r) for rx, r in rules if (m := rx.match(name))), None)
        if match is None:
            if IGNORED.match(name):
                continue
            raise unexpected(name)
        m, rule = match
        groups = m.groupdict()
        target, param = rule.target.format(**groups), rule.param.format(**groups)
        raw = source.read(name)
        if rule.permute and cfg.preset.gguf_permute_qk:
            raw = RawTensor(unpermute_rows(raw.data, heads[rule.permute]), raw.qtype, raw.shape)
        shards = pending.setdefault((target, param), {})
        shards[rule.shard] = raw
        order = SHARD_ORDER[target.rsplit(".", 1)[-1]] if rule.shard else (None,)
        if not all(s in shards for s in order):
            continue
        del pending[(target, param)]
        parts = [shards[s] for s in order]
        try:
            module = model.get_submodule(target)
        except AttributeError:  # a module this family lacks (q/k norms in a Llama checkpoint)
            raise unexpected(name) from None
        if isinstance(module, RMSNorm):
            module.set_weight((parts[0].to_float() + norm_offset).to(policy.device))
        elif isinstance(module, Embedding):
            embedding = merge_rows(parts)
            module.set_weight(embedding, policy)
        elif param == "bias":
            assert isinstance(module, Linear)
            module.set_bias(torch.cat([p.to_float() for p in parts]), policy)
        else:
            assert isinstance(module, Linear)
            head_policy = policy if target != "lm_head" or policy.quantize is None else _int8(policy)
            module.set_weight(merge_rows(parts), head_policy)
        loaded.add(f"{target}.{param}")
    if "lm_head.weight" not in loaded and cfg.tie_word_embeddings and embedding is not None:
        model.lm_head.set_weight(embedding, policy if policy.quantize is None else _int8(policy), tied=True)
        loaded.add("lm_head.weight")
        shared = model.lm_head.exact_table()
        if not isinstance(embedding, torch.Tensor) and shared is not None:
            # One packed table for both: the embedding expands its rows from the head's weight instead of
            # keeping a second copy of the vocabulary (Gemma 3 270M: 170 of its 240 MiB).
            model.embed_tokens.set_weight(shared, policy)
    expected = {
        f"{n}.weight" for n, mod in model.named_modules() if isinstance(mod, Linear | Embedding | RMSNorm)
    }
    expected |= {f"{n}.bias" for n, mod in model.named_modules() if isinstance(mod, Linear) and mod.has_bias}
    missing = sorted(expected - loaded)
    if missing or pending:
        incomplete = sorted(f"{t}.{p}" for t, p in pending)
        raise UnsupportedModelError(
            f"{source.path}: checkpoint incomplete; missing {missing[:5]}{'...' if len(missing) > 5 else ''}"
            f"{f', partial {incomplete[:5]}' if incomplete else ''}"
        )


def _int8(policy: WeightPolicy) -> WeightPolicy:
    # The output head is the most precision-sensitive matmul; int4 there costs too much quality.
    return replace(policy, quantize="int8")


def load_model(
    path: str | Path, policy: WeightPolicy, max_positions: int | None = None
) -> tuple[LlamaForCausalLM, GGUFSource | SafetensorsSource]:
    """Build the model for `path` and load its weights onto `policy.device`; returns (model, source).

    `max_positions` sizes the RoPE tables (default and cap: the model's own context length).
    """
    source = open_source(path)
    cfg = source.model_config()
    longest = cfg.max_position_embeddings
    model = LlamaForCausalLM(cfg, min(max_positions or longest, longest))
    model.rotary.to(policy.device)
    load_weights(model, source, policy)
    files = [source.path] if source.path.is_file() else list(source.path.glob("*.safetensors"))
    log.info(
        "%s: weights take %.1f MiB on %s; checkpoint file size %.1f MiB",
        source.path.name, weight_nbytes(model) / 2**20, policy.device,
        sum(f.stat().st_size for f in files) / 2**20,
    )  # fmt: skip
    return model.eval(), source
