"""Tokenizer metadata for GGUF files, read from a checkpoint's Hugging Face tokenizer.

llama.cpp tokenizes from the file alone, so the vocabulary must reproduce the HF tokenizer:
- SentencePiece-style BPE (Llama 1/2, llama2.c; '▁' for spaces, <0xXX> byte fallback) -> `llama`
  with scores. llama.cpp merges the adjacent pair whose result has the highest score; HF merges the
  lowest-ranked merge. So score = -rank of the first merge producing a piece gives the same order.
  When the checkpoint ships SentencePiece's tokenizer.model, its own scores are used instead.
- byte-level BPE (Llama 3, Qwen2, Phi-2; 'Ġ' for spaces) -> `gpt2` with the merges list.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

# llama.cpp's token types (gguf.TokenType): written as plain ints so this module imports cheaply.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")
# llama.cpp's pre-tokenizer for byte-level BPE, by the HF tokenizer's split regex (Llama 3, Qwen2);
# a bare ByteLevel pre-tokenizer uses GPT-2's regex (Phi-2 / CodeGen).
_SPLIT_TAIL = r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_SPLIT_HEAD = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
PRE_TOKENIZER_BY_REGEX = {_SPLIT_HEAD + r"\p{N}{1,3}" + _SPLIT_TAIL: "llama-bpe",
                          _SPLIT_HEAD + r"\p{N}" + _SPLIT_TAIL: "qwen2"}
GPT2_PRE_TOKENIZER = "gpt-2"
SMOLLM_PRE_TOKENIZER = "smollm"    # Digits(individual) then ByteLevel with its regex (SmolLM, SmolLM2)
UNSCORED = -1e9   # multi-character pieces no merge produces: never preferred over a real merge


@dataclass(kw_only=True)
class Vocab:
    model: str                        # "llama" (SentencePiece BPE) or "gpt2" (byte-level BPE)
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] = field(default_factory=list)
    pre: str | None = None
    bos_id: int | None = None
    eos_id: int | None = None
    unk_id: int | None = None
    pad_id: int | None = None
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool = True
    chat_template: str | None = None


def add_vocab(writer, model_dir, *, vocab_size: int) -> Vocab:
    vocab = read_vocab(model_dir, vocab_size=vocab_size)
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    for value, method in ((vocab.bos_id, writer.add_bos_token_id), (vocab.eos_id, writer.add_eos_token_id),
                          (vocab.unk_id, writer.add_unk_token_id), (vocab.pad_id, writer.add_pad_token_id)):
        if value is not None:
            method(int(value))
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.model == "llama":
        writer.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.chat_template:          # llama.cpp's chat endpoints format prompts with it
        writer.add_chat_template(vocab.chat_template)
    return vocab


def read_vocab(model_dir, *, vocab_size: int) -> Vocab:
    from transformers import AutoTokenizer
    model_dir = Path(model_dir)
    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as err:  # noqa: BLE001 - any loader failure means the same thing here
        raise ValueError(f"GGUF export needs the checkpoint's tokenizer; loading it from {model_dir} failed: "
                         f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"GGUF export needs a fast (tokenizers) tokenizer; {type(tok).__name__} is not one")
    spec = json.loads(backend.to_str())
    model = spec["model"]
    if model["type"] != "BPE":
        raise ValueError(f"not exportable to GGUF yet: {model['type']} tokenizers (only BPE)")
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    if _is_byte_level(spec):
        vocab = _gpt2_vocab(model, added, _pre_tokenizer(spec))
    else:
        vocab = _spm_vocab(model, added, model_dir)
        vocab.add_space_prefix = _adds_space_prefix(spec)
    vocab.bos_id, vocab.eos_id = tok.bos_token_id, tok.eos_token_id
    vocab.unk_id, vocab.pad_id = tok.unk_token_id, tok.pad_token_id
    sample = tok("a")["input_ids"]   # what the HF tokenizer really adds around text
    vocab.add_bos = bool(sample) and vocab.bos_id is not None and sample[0] == vocab.bos_id
    vocab.add_eos = bool(sample) and vocab.eos_id is not None and sample[-1] == vocab.eos_id
    template = getattr(tok, "chat_template", None)
    vocab.chat_template = template if isinstance(template, str) else None
    if vocab.unk_id is not None and vocab.unk_id < len(vocab.types):
        vocab.types[vocab.unk_id] = UNKNOWN
    _pad_to(vocab, vocab_size)
    return vocab


def _is_byte_level(spec: dict) -> bool:
    parts = [spec.get("pre_tokenizer") or {}, spec.get("decoder") or {}]
    flat = json.dumps(parts)
    return '"ByteLevel"' in flat and not spec["model"].get("byte_fallback", False)


def _adds_space_prefix(spec: dict) -> bool:
    """SentencePiece prepends '▁' to the text: Metaspace(prepend_scheme first/always) or Prepend('▁')."""
    flat = json.dumps([spec.get("normalizer"), spec.get("pre_tokenizer")])
    if '"Prepend"' in flat:
        return True
    pre = json.dumps(spec.get("pre_tokenizer"))
    return '"Metaspace"' in pre and '"never"' not in pre


def _merge_pairs(model: dict) -> list[tuple[str, str]]:
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]


def _ordered_tokens(model: dict, added: dict) -> list[str]:
    by_id = {i: piece for piece, i in model["vocab"].items()}
    by_id.update({i: t["content"] for i, t in added.items()})
    size = max(by_id) + 1
    missing = [i for i in range(size) if i not in by_id]
    if missing:
        raise ValueError(f"tokenizer has holes in its ids (first missing: {missing[0]})")
    return [by_id[i] for i in range(size)]


def _base_types(tokens: list[str], added: dict, *, byte_fallback: bool) -> list[int]:
    types = []
    for i, piece in enumerate(tokens):
        if i in added:
            types.append(CONTROL if added[i].get("special") else USER_DEFINED)
        elif byte_fallback and BYTE_TOKEN.match(piece):
            types.append(BYTE)
        else:
            types.append(NORMAL)
    return types


def _spm_vocab(model: dict, added: dict, model_dir: Path) -> Vocab:
    tokens = _ordered_tokens(model, added)
    types = _base_types(tokens, added, byte_fallback=True)
    scores = _sentencepiece_scores(model_dir, tokens)
    if scores is None:
        rank = {}
        for r, (a, b) in enumerate(_merge_pairs(model)):
            rank.setdefault(a + b, r)
        scores = [-float(rank[p]) if p in rank else (0.0 if len(p) <= 1 or types[i] != NORMAL else UNSCORED)
                  for i, p in enumerate(tokens)]
    return Vocab(model="llama", tokens=tokens, types=types, scores=scores)


def _sentencepiece_scores(model_dir: Path, tokens: list[str]) -> list[float] | None:
    path = model_dir / "tokenizer.model"
    if not path.is_file():
        return None
    try:
        import sentencepiece
    except ImportError:
        return None
    sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
    if sp.get_piece_size() > len(tokens) or any(sp.id_to_piece(i) != tokens[i] for i in range(sp.get_piece_size())):
        return None   # a different vocabulary: trust tokenizer.json's merges instead
    return [float(sp.get_score(i)) for i in range(sp.get_piece_size())] + [0.0] * (len(tokens) - sp.get_piece_size())


def _pre_tokenizer(spec: dict) -> str:
    """llama.cpp's name for the HF pre-tokenizer; a ValueError when llama.cpp has no match."""
    pre = spec.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    splits = [p for p in parts if p.get("type") == "Split"]
    byte_level = [p for p in parts if p.get("type") == "ByteLevel"]
    digits = [p for p in parts if p.get("type") == "Digits"]
    if any(p.get("add_prefix_space") for p in byte_level):
        raise ValueError("not exportable to GGUF yet: byte-level tokenizer with add_prefix_space")
    if len(splits) + len(byte_level) + len(digits) != len(parts):
        raise ValueError(f"not exportable to GGUF yet: pre-tokenizer {json.dumps(pre)[:120]}")
    if digits:   # SmolLM: every digit apart, then GPT-2's regex; llama.cpp's `smollm` is \p{N} then that regex
        if (len(digits), len(byte_level), len(splits)) == (1, 1, 0) and digits[0].get("individual_digits") \
                and byte_level[0].get("use_regex", True) and parts[0] is digits[0]:
            return SMOLLM_PRE_TOKENIZER
        raise ValueError(f"not exportable to GGUF yet: pre-tokenizer {json.dumps(pre)[:120]}")
    if len(splits) == 1 and byte_level and not byte_level[0].get("use_regex", True):
        regex = splits[0].get("pattern", {}).get("Regex")
        if regex in PRE_TOKENIZER_BY_REGEX:
            return PRE_TOKENIZER_BY_REGEX[regex]
        raise ValueError(f"not exportable to GGUF yet: tokenizer split regex {regex!r} has no llama.cpp equivalent")
    if not splits and len(byte_level) == 1 and byte_level[0].get("use_regex", True):
        return GPT2_PRE_TOKENIZER
    raise ValueError(f"not exportable to GGUF yet: pre-tokenizer {json.dumps(pre)[:120]}")


def _gpt2_vocab(model: dict, added: dict, pre: str) -> Vocab:
    tokens = _ordered_tokens(model, added)
    types = _base_types(tokens, added, byte_fallback=False)
    merges = [f"{a} {b}" for a, b in _merge_pairs(model)]
    return Vocab(model="gpt2", tokens=tokens, types=types, merges=merges, pre=pre, add_space_prefix=False)


def _pad_to(vocab: Vocab, vocab_size: int) -> None:
    """Embedding matrices are often padded past the tokenizer; llama.cpp wants one entry per row."""
    n = len(vocab.tokens)
    if n > vocab_size:
        raise ValueError(f"tokenizer has {n} tokens but the model's embeddings have only {vocab_size} rows")
    for i in range(n, vocab_size):
        vocab.tokens.append(f"[PAD{i}]")
        vocab.types.append(UNUSED)
        if vocab.scores is not None:
            vocab.scores.append(UNSCORED)
