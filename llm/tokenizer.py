"""Tokenizer and chat template from the model's own files: GGUF metadata or tokenizer.json, never the hub.

A GGUF file carries its vocabulary, merges (or SentencePiece scores), special token ids and chat template as
metadata; we build the equivalent `tokenizers.Tokenizer` from them. How to split text before BPE depends on
the vocabulary and is looked up by the file's `tokenizer.ggml.pre` name (data, as in llama.cpp). A folder
model uses its `tokenizer.json` and `tokenizer_config.json`. Chat templates are rendered with jinja2 the way
transformers does (sandboxed, `trim_blocks`, `lstrip_blocks`); for a template without a system role (Gemma,
Mistral v0.1/v0.2: it never mentions one, or raises on one) the system prompt opens the next user turn. A file
without a template (base models are often shipped so) gets its family's chat format, recognised by the turn
tokens its vocabulary holds (`default_chat_template`), and ChatML when it holds none of them.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as Backend

from llm.base import ChatMessage
from llm.copying import CopyTable

_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Regex splits applied in order before byte-level BPE, by GGUF `tokenizer.ggml.pre` (llama.cpp's table).
PRE_TOKENIZER_SPLITS: dict[str, tuple[str, ...]] = {
    "default": (_GPT2_SPLIT,),
    "gpt2": (_GPT2_SPLIT,),
    "smollm": (r"\p{N}", _GPT2_SPLIT),  # digits one by one, as SmolLM's tokenizer.json does
    "llama-bpe": (_LLAMA3_SPLIT,),
    "llama3": (_LLAMA3_SPLIT,),
    "qwen2": (_QWEN2_SPLIT,),
}
# Tokens that end an assistant turn in the chat formats of the supported families.
END_OF_TURN = (
    "<|im_end|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<|endoftext|>",
    "</s>",
    "<|end|>",
    "<end_of_turn>",
)
# `{# system role #}`: the built-in formats that take a system message say so (`Tokenizer.render_chat`).
CHATML = (
    "{# system role #}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# The chat formats of families whose files may come without a template, by a turn token only they have.
FAMILY_TEMPLATES = (
    ("<|im_start|>", CHATML),  # Qwen, SmolLM
    (
        "<start_of_turn>",  # Gemma: no system role (it folds into the first user turn), "model" replies
        "{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
        "{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
        "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}",
    ),
    (
        "<|start_header_id|>",  # Llama 3
        "{# system role #}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
        "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}",
    ),
    (
        "<|assistant|>",  # Phi-3, Phi-4-mini
        "{# system role #}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}",
    ),
)
_CONTROL, _USER_DEFINED = 3, 4  # GGUF token types: special tokens, and text tokens matched whole


class Tokenizer:
    """Text <-> ids, the chat template, and the ids that end generation."""

    def __init__(
        self,
        backend: Backend,
        *,
        bos_token: str | None,
        eos_token: str | None,
        add_bos: bool,
        chat_template: str | None,
    ) -> None:
        self.backend = backend
        self.bos_token, self.eos_token = bos_token, eos_token
        self.bos_id = backend.token_to_id(bos_token) if bos_token else None
        self.add_bos = add_bos and self.bos_id is not None
        self.chat_template = chat_template or default_chat_template(backend)
        ids = {backend.token_to_id(t) for t in (eos_token, *END_OF_TURN) if t}
        self.stop_token_ids = frozenset(i for i in ids if i is not None)
        # What the chat template writes after an assistant reply (a training target ends with it).
        known = (t for t in END_OF_TURN if backend.token_to_id(t) is not None)
        self.end_of_turn = next(known, eos_token or "")
        self._template: Any = None

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        """Plain text to ids (special-token strings in the text are recognised, as in chat templates)."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.backend.decode(ids, skip_special_tokens=True)

    def render_chat(self, messages: Sequence[ChatMessage]) -> str:
        has_system = any(m.role == "system" for m in messages)
        if has_system and "system" not in self.chat_template:
            return self._render(fold_system(messages))
        try:
            return self._render(messages)
        except ValueError:  # the template's raise_exception, e.g. "System role not supported"
            if not has_system:
                raise
            return self._render(fold_system(messages))

    def _render(self, messages: Sequence[ChatMessage]) -> str:
        if self._template is None:
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(message: str) -> None:
                raise ValueError(f"chat template: {message}")

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = raise_exception
            env.filters["tojson"] = lambda v, **kw: json.dumps(v, ensure_ascii=False, **kw)
            self._template = env.from_string(self.chat_template)
        return self._template.render(
            messages=[{"role": m.role, "content": m.content} for m in messages],
            add_generation_prompt=True,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
        )

    @functools.cached_property
    def copy_table(self) -> CopyTable:
        """The vocabulary as bytes, for copy-constrained decoding (`llm.copying`)."""
        return CopyTable(token_bytes(self.backend))

    def apply_chat_template(self, messages: Sequence[ChatMessage]) -> list[int]:
        ids = self.encode(self.render_chat(messages))
        if self.add_bos and (not ids or ids[0] != self.bos_id):
            ids.insert(0, self.bos_id)  # type: ignore[arg-type]
        return ids


def default_chat_template(backend: Backend) -> str:
    """The chat format of the family whose turn tokens the vocabulary holds; ChatML when it holds none."""
    return next(
        (template for token, template in FAMILY_TEMPLATES if backend.token_to_id(token) is not None), CHATML
    )


def _gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: the printable character that stands for each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1)]
    printable += list(range(ord("\xae"), ord("\xff") + 1))
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


def token_bytes(backend: Backend) -> list[bytes | None]:
    """Each token's bytes as the decoder writes them (None for special tokens): byte-level BPE maps its
    alphabet back to bytes, SentencePiece turns `▁` into a space and `<0xAB>` into that byte; any other
    decoder is asked token by token."""
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    kinds = {decoder.get("type")} | {d.get("type") for d in decoder.get("decoders", [])}
    special = {i for i, t in backend.get_added_tokens_decoder().items() if t.special}
    byte_decoder = _gpt2_byte_decoder() if "ByteLevel" in kinds else None
    pieces: list[bytes | None] = []
    for token in range(backend.get_vocab_size()):
        piece = backend.id_to_token(token)
        if piece is None or token in special:
            pieces.append(None)
        elif byte_decoder is not None:
            pieces.append(
                bytes(byte_decoder[c] for c in piece) if all(c in byte_decoder for c in piece) else None
            )
        elif "ByteFallback" in kinds and len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            pieces.append(bytes([int(piece[3:5], 16)]))
        elif "Replace" in kinds:
            pieces.append(piece.replace("\u2581", " ").encode())
        else:
            pieces.append(backend.decode([token]).encode())
    return pieces


def fold_system(messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    """The conversation without system messages: each one's text opens the next user turn (or becomes one)."""
    folded: list[ChatMessage] = []
    pending: list[str] = []
    for m in messages:
        if m.role == "system":
            pending.append(m.content)
        elif m.role == "user" and pending:
            folded.append(ChatMessage("user", "\n\n".join([*pending, m.content])))
            pending = []
        else:
            folded.append(m)
    if pending:
        folded.append(ChatMessage("user", "\n\n".join(pending)))
    return folded


def _byte_level(vocab: dict[str, int], merges: list[tuple[str, str]], pre: str | None) -> Backend:
    backend = Backend(models.BPE(vocab=vocab, merges=merges, ignore_merges=False))
    splits = PRE_TOKENIZER_SPLITS.get(pre or "default", PRE_TOKENIZER_SPLITS["default"])
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(s), behavior="isolated") for s in splits]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    backend.decoder = decoders.ByteLevel()
    return backend


def spm_merges(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """BPE merges of a SentencePiece vocabulary: every split of a piece into two pieces, best score first."""
    vocab = {t: i for i, t in enumerate(tokens)}
    ranked = []
    for piece, piece_id in vocab.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                ranked.append((-scores[piece_id], vocab[left], vocab[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _sentencepiece(
    tokens: list[str], scores: list[float], unk: str | None, add_space_prefix: bool
) -> Backend:
    vocab = {t: i for i, t in enumerate(tokens)}
    backend = Backend(
        models.BPE(
            vocab=vocab, merges=spm_merges(tokens, scores), unk_token=unk, fuse_unk=True, byte_fallback=True
        )
    )
    steps = [normalizers.Prepend("\u2581")] if add_space_prefix else []
    backend.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "\u2581")])
    backend.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
        + ([decoders.Strip(" ", 1, 0)] if add_space_prefix else [])
    )
    return backend


def from_gguf_fields(field: Any) -> Tokenizer:
    """Build from a GGUF file's metadata; `field(key)` returns a metadata value or None."""
    model = field("tokenizer.ggml.model")
    tokens: list[str] = field("tokenizer.ggml.tokens")
    if tokens is None:
        raise ValueError("GGUF file has no tokenizer vocabulary (tokenizer.ggml.tokens)")

    def token(key: str) -> str | None:
        index = field(f"tokenizer.ggml.{key}")
        return tokens[index] if index is not None and 0 <= index < len(tokens) else None

    if model == "gpt2":
        merges = [tuple(m.split(" ", 1)) for m in field("tokenizer.ggml.merges") or []]
        backend = _byte_level({t: i for i, t in enumerate(tokens)}, merges, field("tokenizer.ggml.pre"))
        default_bos = False
    elif model == "llama":
        add_prefix = field("tokenizer.ggml.add_space_prefix")
        backend = _sentencepiece(
            tokens, field("tokenizer.ggml.scores"), token("unknown_token_id"), add_prefix is not False
        )
        default_bos = True
    else:
        raise ValueError(f"unsupported GGUF tokenizer model {model!r} (supported: gpt2, llama)")
    types = field("tokenizer.ggml.token_type") or []
    # Control tokens are special (never decoded); user-defined ones are text matched whole (Gemma's newline
    # and whitespace-run tokens), so decoding keeps them.
    specials = [t for t, kind in zip(tokens, types, strict=False) if kind == _CONTROL]
    user_defined = [t for t, kind in zip(tokens, types, strict=False) if kind == _USER_DEFINED]
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in user_defined])
    add_bos = field("tokenizer.ggml.add_bos_token")
    return Tokenizer(
        backend,
        bos_token=token("bos_token_id"),
        eos_token=token("eos_token_id"),
        add_bos=default_bos if add_bos is None else bool(add_bos),
        chat_template=field("tokenizer.chat_template"),
    )


def from_folder(path: Path) -> Tokenizer:
    """Build from `tokenizer.json` (+ `tokenizer_config.json`, `chat_template.jinja`) of a model folder."""
    tokenizer_file = path / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise ValueError(f"{path}: no tokenizer.json")
    backend = Backend.from_file(str(tokenizer_file))
    config_file = path / "tokenizer_config.json"
    config: dict[str, Any] = json.loads(config_file.read_text()) if config_file.is_file() else {}

    def token(key: str) -> str | None:
        value = config.get(key)
        return value.get("content") if isinstance(value, dict) else value

    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: use the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    jinja_file = path / "chat_template.jinja"
    if template is None and jinja_file.is_file():
        template = jinja_file.read_text()
    return Tokenizer(
        backend,
        bos_token=token("bos_token"),
        eos_token=token("eos_token"),
        add_bos=bool(config.get("add_bos_token", False)),
        chat_template=template,
    )


def load_tokenizer(path: Path) -> Tokenizer:
    """The tokenizer of a GGUF file or a model folder, without loading the weights."""
    if path.is_file():
        from llm.model.loader import GGUFSource

        return from_gguf_fields(GGUFSource(path).field)
    return from_folder(path)
