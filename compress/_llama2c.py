"""Convert a llama2.c "legacy v0" checkpoint and its tokenizer.bin into a Hugging Face Llama directory.

Used once to produce the bundled model (compress/_bundled/stories260k/): karpathy's tinyllamas
`stories260K` (MIT), a real pretrained 260K-parameter TinyStories Llama, so tests and demos run a model
that writes sensible text instead of random weights. Kept in the repo so the bundle can be rebuilt and
audited:

    python -m compress._llama2c --checkpoint ../shared/models/stories260K.bin \
        --tokenizer ../shared/models/tok512.bin --out compress/_bundled/stories260k

File formats (llama2.c export.py `legacy_export` and run.c `build_tokenizer`):
  checkpoint: 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len), then fp32
    tok_emb, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final, freq_cos, freq_sin and, only when
    vocab_size < 0 (an untied classifier), wcls.
  tokenizer: int32 max_token_length, then per token: float32 score, int32 length, raw UTF-8 bytes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import struct
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

# The known-good stories260K.bin (see shared/models/SOURCES.md). A copy with the same header and size
# but different weights circulates (plctlab/rvspoc-s2311-llama2, sha256 9414d5a2...) and generates
# nonsense, so a size/header check alone cannot tell them apart: only the hash can.
STORIES260K_SHA256 = "b0a507e7ad0f626624f17112325e66691f9076d622e1d3274d103d00299f2696"
KNOWN_BAD_SHA256_PREFIX = "9414d5a2"
TOK512_SHA256 = "037cb335abb25d1fa9e8ecae30ed2a3a8ace9302862ebcdc05d51a6bbb10c312"

ROPE_THETA = 10000.0  # llama2.c model.py precompute_freqs_cis default; checked against the stored table
RMS_NORM_EPS = 1e-5   # llama2.c ModelArgs.norm_eps (run.c hard-codes 1e-5 too)
SPIECE_SPACE = "\u2581"  # SentencePiece's "▁", which llama2.c's tokenizer.bin stores as a plain space
SPECIALS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2 in every llama2.c / Llama-2 SentencePiece vocab
N_BYTE_TOKENS = 256  # ids 3..258: byte fallback <0x00>..<0xFF>
_HEADER = struct.Struct("<7i")
_MAX_DIM = 1 << 20  # sanity bound so a wrong file fails on its header, not with a giant allocation


# ----------------------------------------------------------------------------------------------------
# checkpoint


@dataclass(frozen=True)
class Llama2cHeader:
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool  # llama2.c signals an untied classifier with a negative vocab_size

    @property
    def head_size(self) -> int:
        return self.dim // self.n_heads

    def tensor_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """Names and shapes in file order (legacy_export writes them in exactly this order)."""
        L, d, h, kv = self.n_layers, self.dim, self.hidden_dim, self.n_kv_heads * self.head_size
        shapes = [
            ("tok_emb", (self.vocab_size, d)), ("rms_att", (L, d)),
            ("wq", (L, d, d)), ("wk", (L, kv, d)), ("wv", (L, kv, d)), ("wo", (L, d, d)),
            ("rms_ffn", (L, d)), ("w1", (L, h, d)), ("w2", (L, d, h)), ("w3", (L, h, d)),
            ("rms_final", (d,)),
            # RoPE tables run.c never reads; we still parse them to confirm theta (and the layout).
            ("freq_cos", (self.seq_len, self.head_size // 2)), ("freq_sin", (self.seq_len, self.head_size // 2)),
        ]
        if not self.shared_classifier:
            shapes.append(("wcls", (self.vocab_size, d)))
        return shapes

    def file_size(self) -> int:
        return _HEADER.size + 4 * sum(math.prod(shape) for _, shape in self.tensor_shapes())


def parse_header(data: bytes, source: str = "checkpoint") -> Llama2cHeader:
    """Decode and sanity-check the 28-byte header; a wrong file fails here with a readable message."""
    if len(data) < _HEADER.size:
        raise ValueError(f"{source}: {len(data)} bytes is too short for a llama2.c checkpoint header")
    if data[:4] == b"ak42":
        # export.py version 1/2 files start with this magic, then a different header and layout.
        raise ValueError(f"{source}: llama2.c version 1/2 export (magic 'ak42'); only the legacy v0 format "
                         "is supported. Re-export with `export.py --version 0`.")
    dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len = _HEADER.unpack_from(data)
    fields = dict(dim=dim, hidden_dim=hidden_dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
                  vocab_size=abs(vocab_size), seq_len=seq_len)
    bad = [f"{k}={v}" for k, v in fields.items() if not 0 < v <= _MAX_DIM]
    if bad or dim % n_heads or n_heads % n_kv_heads or (dim // n_heads) % 2:
        raise ValueError(f"{source}: not a llama2.c v0 checkpoint (implausible header {fields}; need positive "
                         "sizes, dim divisible by n_heads, n_heads by n_kv_heads, an even head size)")
    return Llama2cHeader(**fields, shared_classifier=vocab_size > 0)


def read_llama2c_tensors(path: str | os.PathLike) -> tuple[Llama2cHeader, dict[str, torch.Tensor]]:
    """Header plus every stored tensor (fp32, llama2.c names and layout)."""
    data = Path(path).read_bytes()
    header = parse_header(data, str(path))
    expected = header.file_size()
    if len(data) != expected:
        # Truncated downloads and mixed-up files (e.g. a tokenizer.bin) land here.
        raise ValueError(f"{path}: size {len(data)} bytes does not match the header's "
                         f"{expected} bytes ({header}); the file is truncated or not a v0 checkpoint")
    flat = torch.frombuffer(bytearray(data[_HEADER.size:]), dtype=torch.float32)
    tensors, offset = {}, 0
    for name, shape in header.tensor_shapes():
        n = math.prod(shape)
        tensors[name] = flat[offset:offset + n].view(shape).clone()
        offset += n
    _check_rope_table(header, tensors, str(path))
    return header, tensors


def _check_rope_table(header: Llama2cHeader, tensors: dict[str, torch.Tensor], source: str) -> None:
    """The stored cos/sin table pins down theta; HF recomputes RoPE, so a different theta would silently
    change the model. Matching it also proves the offsets of everything before it are right."""
    hs = header.head_size
    inv_freq = 1.0 / (ROPE_THETA ** (torch.arange(0, hs, 2, dtype=torch.float64) / hs))
    angles = torch.outer(torch.arange(header.seq_len, dtype=torch.float64), inv_freq)
    err = max((tensors["freq_cos"].double() - angles.cos()).abs().max().item(),
              (tensors["freq_sin"].double() - angles.sin()).abs().max().item())
    if not err < 1e-3:  # fp32 rounding of large angles is ~1e-5; `not <` also rejects NaN
        raise ValueError(f"{source}: stored RoPE table does not match theta={ROPE_THETA} (max error {err:.3g}); "
                         "the file is corrupt or was exported with a different rope theta")


def llama_config(header: Llama2cHeader):
    from transformers import LlamaConfig
    return LlamaConfig(
        hidden_size=header.dim, intermediate_size=header.hidden_dim, num_hidden_layers=header.n_layers,
        num_attention_heads=header.n_heads, num_key_value_heads=header.n_kv_heads, head_dim=header.head_size,
        vocab_size=header.vocab_size, max_position_embeddings=header.seq_len, rms_norm_eps=RMS_NORM_EPS,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        tie_word_embeddings=header.shared_classifier, bos_token_id=1, eos_token_id=2,
        dtype=torch.float32, architectures=["LlamaForCausalLM"])


def permute_rope_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """llama2.c (like Meta's code) rotates interleaved pairs (x0,x1),(x2,x3)...; HF's rotate_half rotates
    (x_i, x_{i+hs/2}). Reordering each head's q/k output rows turns one convention into the other (same
    permute as transformers' convert_llama_weights_to_hf)."""
    dim1, dim2 = w.shape
    return w.view(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)


def to_hf_state_dict(header: Llama2cHeader, t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """State dict for LlamaForCausalLM. A tied lm_head is the embedding tensor itself (loads strictly;
    writers must drop the alias, as save_pretrained does)."""
    sd = {"model.embed_tokens.weight": t["tok_emb"], "model.norm.weight": t["rms_final"]}
    for i in range(header.n_layers):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = t["rms_att"][i]
        sd[p + "self_attn.q_proj.weight"] = permute_rope_rows(t["wq"][i], header.n_heads)
        sd[p + "self_attn.k_proj.weight"] = permute_rope_rows(t["wk"][i], header.n_kv_heads)
        sd[p + "self_attn.v_proj.weight"] = t["wv"][i]
        sd[p + "self_attn.o_proj.weight"] = t["wo"][i]
        sd[p + "post_attention_layernorm.weight"] = t["rms_ffn"][i]
        # llama2.c FFN: w2(silu(w1 x) * w3 x), i.e. w1 = gate, w3 = up, w2 = down.
        sd[p + "mlp.gate_proj.weight"] = t["w1"][i]
        sd[p + "mlp.up_proj.weight"] = t["w3"][i]
        sd[p + "mlp.down_proj.weight"] = t["w2"][i]
    sd["lm_head.weight"] = t["tok_emb"] if header.shared_classifier else t["wcls"]
    return {k: v.contiguous() for k, v in sd.items()}


def read_llama2c_checkpoint(path: str | os.PathLike):
    """(LlamaConfig, state dict for LlamaForCausalLM) from a v0 checkpoint."""
    header, tensors = read_llama2c_tensors(path)
    return llama_config(header), to_hf_state_dict(header, tensors)


# ----------------------------------------------------------------------------------------------------
# tokenizer


def read_llama2c_vocab(path: str | os.PathLike) -> tuple[int, list[tuple[bytes, float]]]:
    """(max_token_length, [(raw bytes, score)]) exactly as run.c reads it. The file has no token count:
    run.c takes it from the checkpoint, so we read to the end and let the caller cross-check."""
    data = Path(path).read_bytes()
    if len(data) < 4:
        raise ValueError(f"{path}: too short for a llama2.c tokenizer")
    (max_len,), offset, vocab = struct.unpack_from("<i", data), 4, []
    if not 0 < max_len <= 1024:
        raise ValueError(f"{path}: max_token_length {max_len} is implausible; not a llama2.c tokenizer.bin")
    while offset < len(data):
        if offset + 8 > len(data):
            raise ValueError(f"{path}: truncated inside token {len(vocab)}")
        score, n = struct.unpack_from("<fi", data, offset)
        offset += 8
        if not 0 <= n <= max_len * 4 or offset + n > len(data):  # specials like "\n<s>\n" exceed max_len
            raise ValueError(f"{path}: token {len(vocab)} has bad length {n}; truncated or not a tokenizer.bin")
        vocab.append((data[offset:offset + n], score))
        offset += n
    return max_len, vocab


def read_llama2c_tokenizer(path: str | os.PathLike, vocab_size: int | None = None) -> list[tuple[str, float]]:
    """[(piece, score)] in id order, written the way SentencePiece / llama.cpp / HF name them: '▁' for
    spaces, '<0xXX>' byte tokens, '<unk>' '<s>' '</s>' specials (llama2.c stores BOS/EOS as "\\n<s>\\n")."""
    _, raw = read_llama2c_vocab(path)
    if vocab_size is not None and len(raw) != vocab_size:
        raise ValueError(f"{path}: {len(raw)} tokens but the checkpoint has vocab_size {vocab_size}")
    if len(raw) <= len(SPECIALS) + N_BYTE_TOKENS:
        raise ValueError(f"{path}: only {len(raw)} tokens; expected specials, 256 byte tokens and merges")
    pieces = []
    for i, (b, score) in enumerate(raw):
        if i < len(SPECIALS):
            if b.strip() != SPECIALS[i].encode():
                raise ValueError(f"{path}: token {i} is {b!r}, expected {SPECIALS[i]!r}")
            piece = SPECIALS[i]
        elif i < len(SPECIALS) + N_BYTE_TOKENS:
            piece = f"<0x{i - len(SPECIALS):02X}>"
            if b != piece.encode():
                raise ValueError(f"{path}: token {i} is {b!r}, expected byte-fallback token {piece!r}")
        else:
            try:
                piece = b.decode("utf-8").replace(" ", SPIECE_SPACE)
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}: token {i} ({b!r}) is not valid UTF-8") from e
        pieces.append((piece, score))
    if len({p for p, _ in pieces}) != len(pieces):
        raise ValueError(f"{path}: duplicate pieces in the vocabulary")
    return pieces


def bpe_merges(pieces: list[tuple[str, float]]) -> list[tuple[str, str]]:
    """SentencePiece BPE has no merge list: it repeatedly merges the adjacent pair whose concatenation is
    the highest-scoring piece (llama2.c run.c `encode` does the same). An HF BPE model expresses that as
    one merge per way of splitting a piece into two vocab pieces, ranked by the piece's score, which is
    what transformers' SentencePiece converter generates. Only ordinary pieces take part: specials and
    byte tokens are never merged."""
    first_normal = len(SPECIALS) + N_BYTE_TOKENS
    normal = {p: (-score, i) for i, (p, score) in enumerate(pieces) if i >= first_normal}
    merges = []
    for piece in sorted(normal, key=normal.get):  # best score first; ties in id (SentencePiece) order
        merges += [(piece[:k], piece[k:]) for k in range(1, len(piece))
                   if piece[:k] in normal and piece[k:] in normal]
    return merges


def build_tokenizer(pieces: list[tuple[str, float]]):
    """A `tokenizers` pipeline equivalent to Llama-2's tokenizer.json (SentencePiece BPE, byte fallback)."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE

    vocab = {p: i for i, (p, _) in enumerate(pieces)}
    tok = Tokenizer(BPE(vocab=vocab, merges=bpe_merges(pieces), unk_token=SPECIALS[0], fuse_unk=True,
                        byte_fallback=True))
    # SentencePiece's add_dummy_prefix + space -> '▁' (run.c prepends the " " token for the same reason).
    # No pre-tokenizer: SentencePiece merges across the whole text, not per word.
    tok.normalizer = normalizers.Sequence([normalizers.Prepend(SPIECE_SPACE),
                                           normalizers.Replace(" ", SPIECE_SPACE)])
    # Inverse: '▁' -> space, <0xXX> runs -> UTF-8, then drop the dummy prefix space.
    tok.decoder = decoders.Sequence([decoders.Replace(SPIECE_SPACE, " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(content=" ", left=1, right=0)])
    bos = SPECIALS[1]
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                       special_tokens=[(bos, 1)])
    # Registered as special so they are never split and skip_special_tokens drops them.
    tok.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in SPECIALS])
    return tok


def hf_tokenizer(pieces: list[tuple[str, float]], model_max_length: int):
    from transformers import PreTrainedTokenizerFast
    return PreTrainedTokenizerFast(tokenizer_object=build_tokenizer(pieces), unk_token=SPECIALS[0],
                                   bos_token=SPECIALS[1], eos_token=SPECIALS[2],
                                   model_max_length=model_max_length, clean_up_tokenization_spaces=False)


def save_tokenizer(pieces: list[tuple[str, float]], directory: Path, model_max_length: int) -> None:
    """tokenizer.json + tokenizer_config.json. The class is recorded as PreTrainedTokenizerFast (v5 writes
    its new name, TokenizersBackend, which transformers 4 cannot load; v5 maps the old name to it).
    Never LlamaTokenizer(Fast): in transformers 5 it discards tokenizer.json's normalizer and rebuilds a
    Metaspace(prepend_scheme="first") pipeline that drops the dummy prefix when text starts with a space,
    so "  x" would no longer encode like llama2.c / SentencePiece."""
    hf_tokenizer(pieces, model_max_length).save_pretrained(directory)
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------------------------------
# output directory

# The tinyllamas model card declares MIT; the weights ship in llama2.c's format with its tokenizer, and
# MIT asks for the notice to travel with copies, so the bundle carries llama2.c's LICENSE verbatim.
LICENSE = """The stories260K weights (https://huggingface.co/karpathy/tinyllamas) are released under the MIT
licence; the llama2.c checkpoint format, tokenizer and the code that produced them come from
https://github.com/karpathy/llama2.c, whose licence follows.

MIT License

Copyright (c) 2023 Andrej

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


def sha256_file(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def verify_sources(checkpoint: Path, tokenizer: Path, *, verify: bool) -> dict[str, str]:
    """Hash both inputs; a wrong checkpoint is an error unless verify=False, then a loud warning."""
    hashes = {"checkpoint": sha256_file(checkpoint), "tokenizer": sha256_file(tokenizer)}
    problems = []
    if hashes["checkpoint"] != STORIES260K_SHA256:
        hint = (" This is the known-bad plctlab copy whose greedy output is nonsense."
                if hashes["checkpoint"].startswith(KNOWN_BAD_SHA256_PREFIX) else "")
        problems.append(f"checkpoint {checkpoint} has sha256 {hashes['checkpoint']}, not the known-good "
                        f"stories260K.bin {STORIES260K_SHA256}.{hint}")
    if hashes["tokenizer"] != TOK512_SHA256:
        problems.append(f"tokenizer {tokenizer} has sha256 {hashes['tokenizer']}, not tok512.bin {TOK512_SHA256}.")
    if problems:
        message = " ".join(problems)
        if verify:
            raise ValueError(message + " Pass --no-verify to convert it anyway.")
        warnings.warn("UNVERIFIED SOURCE FILES: " + message, stacklevel=2)
        print("!" * 78 + "\nWARNING: UNVERIFIED SOURCE FILES: " + message + "\n" + "!" * 78, file=sys.stderr)
    return hashes


def _readme(checkpoint: Path, tokenizer: Path, hashes: dict[str, str], header: Llama2cHeader) -> str:
    verified = hashes["checkpoint"] == STORIES260K_SHA256 and hashes["tokenizer"] == TOK512_SHA256
    origin = ("karpathy's tinyllamas `stories260K` (https://huggingface.co/karpathy/tinyllamas, "
              "`stories260K/`), distributed in llama2.c format via karpathy/llama2.c; copy taken from "
              "DaveBben/esp32-llm `data/` (see shared/models/SOURCES.md)." if verified else
              "UNVERIFIED llama2.c checkpoint: the hashes below do not match the known stories260K files.")
    sample = ("Greedy decoding from BOS reproduces llama2.c's sample: \"Once upon a time, there was a little girl\n"
              "named Lily. She loved to play outside in the park. ...\"\n" if verified else "")
    return f"""# stories260K (Hugging Face Llama format)

{origin}

Licence: MIT (karpathy/tinyllamas stories260K via llama2.c); see LICENSE.

A {header.n_layers}-layer Llama-2-architecture model trained on TinyStories: dim {header.dim}, FFN
{header.hidden_dim}, {header.n_heads} query / {header.n_kv_heads} KV heads (head size {header.head_size}),
vocab {header.vocab_size} (SentencePiece BPE, byte fallback), context {header.seq_len}, tied embeddings, fp32.

Converted by `python -m compress._llama2c` (compress/_llama2c.py) from:

| file | sha256 |
|---|---|
| {checkpoint.name} | {hashes['checkpoint']} |
| {tokenizer.name} | {hashes['tokenizer']} |

q/k projection rows are permuted from llama2.c's interleaved RoPE pairs to HF's rotate_half order.
{sample}"""


def convert(checkpoint: str | os.PathLike, tokenizer: str | os.PathLike, out: str | os.PathLike, *,
            force: bool = False, verify: bool = True) -> Path:
    """Write config.json, generation_config.json, model.safetensors, tokenizer files, README.md, LICENSE."""
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    from ._atomic import atomic_dir
    from ._io import check_output_dir, write_errors

    checkpoint, tokenizer = Path(checkpoint), Path(tokenizer)
    out = check_output_dir(out, force=force)  # fail before any work
    hashes = verify_sources(checkpoint, tokenizer, verify=verify)
    header, tensors = read_llama2c_tensors(checkpoint)
    config, state = llama_config(header), to_hf_state_dict(header, tensors)
    pieces = read_llama2c_tokenizer(tokenizer, vocab_size=header.vocab_size)
    if header.shared_classifier:
        del state["lm_head.weight"]  # transformers re-ties it from tie_word_embeddings on load

    # Built in a sibling temp dir that replaces `out` when complete (compress._atomic): a failure
    # never leaves a half-written bundle.
    with write_errors(out), atomic_dir(out, force=force) as tmp:
        config.save_pretrained(tmp)
        GenerationConfig(bos_token_id=1, eos_token_id=2).save_pretrained(tmp)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        save_tokenizer(pieces, tmp, model_max_length=header.seq_len)
        (tmp / "README.md").write_text(_readme(checkpoint, tokenizer, hashes, header))
        (tmp / "LICENSE").write_text(LICENSE)
        # safetensors may create owner-only files; package data must be world-readable.
        for path in tmp.iterdir():
            path.chmod(0o755 if path.is_dir() else 0o644)
    return out


def _greedy_sample(directory: Path, new_tokens: int = 40) -> str:
    """Smoke test printed by the CLI: the converted model should tell a TinyStories story."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    ids = torch.tensor([[tok.bos_token_id]])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.eos_token_id)
    return tok.decode(out[0], skip_special_tokens=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m compress._llama2c", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="llama2.c legacy v0 .bin (stories260K.bin)")
    ap.add_argument("--tokenizer", required=True, help="llama2.c tokenizer .bin (tok512.bin)")
    ap.add_argument("--out", required=True, help="output directory (must be empty unless --force)")
    ap.add_argument("--force", action="store_true", help="replace a non-empty output directory")
    ap.add_argument("--no-verify", action="store_true",
                    help="convert even if the sha256 does not match the known-good stories260K files")
    args = ap.parse_args(argv)
    try:
        out = convert(args.checkpoint, args.tokenizer, args.out, force=args.force, verify=not args.no_verify)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    print(f"greedy sample: {_greedy_sample(out)!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
