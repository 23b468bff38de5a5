"""The Hugging Face tokenizer a GGUF file describes, split the way llama.cpp splits it.

transformers builds the vocabulary and merges from the file (`AutoTokenizer.from_pretrained(folder,
gguf_file=name)`), but for byte-level vocabularies it falls back to GPT-2's split regex when it does not know
the file's `tokenizer.ggml.pre`, and SmolLM's `smollm` is one it does not know: llama.cpp splits every digit
apart first (`\\p{N}`, then GPT-2's regex), as SmolLM's own tokenizer.json does (a Digits pre-tokenizer before
ByteLevel). So the pre-tokenizer is set here from the name, for every name the project's GGUF export writes
back (compress/_gguf_vocab.py), and any other name is refused rather than guessed.
"""
from __future__ import annotations

from ._gguf_read import GGUFFile
from ._gguf_vocab import PRE_TOKENIZER_BY_REGEX

BYTE_LEVEL_PRE = ("gpt-2", "smollm", *PRE_TOKENIZER_BY_REGEX.values())
SPLIT_REGEX = {name: regex for regex, name in PRE_TOKENIZER_BY_REGEX.items()}


def check_pre_tokenizer(gguf: GGUFFile) -> None:
    model = gguf.metadata.get("tokenizer.ggml.model")
    if model == "llama":
        return                               # SentencePiece BPE: no pre-tokenizer to choose
    if model != "gpt2":
        raise ValueError(f"{gguf.path}: tokenizer model {model!r} is not supported (supported: llama, gpt2)")
    pre = gguf.metadata.get("tokenizer.ggml.pre", "gpt-2")
    if pre not in BYTE_LEVEL_PRE:
        raise ValueError(f"{gguf.path}: pre-tokenizer {pre!r} is not supported (supported: {', '.join(BYTE_LEVEL_PRE)})")


def pre_tokenizer(name: str):
    """The `tokenizers` pre-tokenizer llama.cpp's `name` corresponds to."""
    from tokenizers import Regex, pre_tokenizers
    if name == "gpt-2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if name == "smollm":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True,
                                                                 use_regex=True)])
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(SPLIT_REGEX[name]), behavior="isolated"),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True,
                                                             use_regex=False)])


def build_tokenizer(gguf: GGUFFile):
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging
    check_pre_tokenizer(gguf)
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.path.parent), gguf_file=gguf.path.name)
    except Exception as err:  # noqa: BLE001 - tokenizers raises bare Exceptions for a vocabulary it cannot build
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{gguf.path}: its tokenizer cannot be rebuilt from the file ({first})") from None
    finally:
        hf_logging.set_verbosity(level)
    if gguf.metadata.get("tokenizer.ggml.model") == "gpt2":
        tok.backend_tokenizer.pre_tokenizer = pre_tokenizer(gguf.metadata.get("tokenizer.ggml.pre", "gpt-2"))
    else:
        # llama.cpp's SentencePiece tokenizer prepends one space (when the file says so) and turns every space into
        # '▁'; transformers' Metaspace(prepend_scheme="first") prepends none to text that starts with a space
        # (" a" -> ['▁a'] there, ['▁', '▁a'] in llama.cpp and in Llama's own tokenizer).
        from tokenizers import normalizers
        steps = [normalizers.Replace(" ", "\u2581")]
        if gguf.metadata.get("tokenizer.ggml.add_space_prefix", True):
            steps.insert(0, normalizers.Prepend("\u2581"))
        tok.backend_tokenizer.normalizer = normalizers.Sequence(steps)
        tok.backend_tokenizer.pre_tokenizer = None
    return tok
