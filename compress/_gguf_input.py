"""A local GGUF file as a model: converted once into an FP16 Hugging Face folder, then used like any folder.

    resolve_model("model.gguf") -> <cache>/gguf/<sha256 of the file>/   (config, safetensors, tokenizer)

The cache is keyed by the file's content, so a renamed or copied file reuses its conversion and a changed
file never does. The folder appears atomically (compress/_atomic.py) once complete, under a file lock, so a
second process converting the same file waits and then reuses the first one's folder, and a killed
conversion leaves nothing a later run could mistake for a model. Cache root: $EDGEPRUNE_CACHE, else
$XDG_CACHE_HOME/edgeprune, else ~/.cache/edgeprune.

What is converted: llama.cpp's `llama` and `qwen2` architectures (the project's Llama and Qwen2 families;
Phi-2's `phi2` and per-layer `deci` files are refused with one line). Quantized tensors (Q4_1, Q8_0, K-quants,
...) are dequantized and stored as FP16, which the rules allow, but they are not the original checkpoint's
weights: the conversion prints one `note:` line saying so and records it in the folder (gguf_source.json).
q / k rows are permuted back from llama.cpp's interleaved RoPE pairs to HF's rotate_half order (the inverse of
compress/_export_gguf.py), tied embeddings stay tied (no output.weight), and the tokenizer is rebuilt from the
file's vocabulary with the pre-tokenizer its `tokenizer.ggml.pre` names.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

from ._gguf_read import GGUFFile, TensorInfo

FORMAT = 1                         # bump when the folder layout changes: older folders are converted again
SOURCE_FILE = "gguf_source.json"
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2"}      # GGUF architecture -> HF model_type
UNQUANTIZED = ("F32", "F16")
FP16_MAX = 65504.0
_digests: dict[tuple, str] = {}    # (path, size, mtime, inode) -> sha256, so one process hashes a file once


def is_gguf(name) -> bool:
    return str(name).lower().endswith(".gguf")


def cache_root() -> Path:
    if os.environ.get("EDGEPRUNE_CACHE"):
        return Path(os.environ["EDGEPRUNE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "edgeprune"


def sha256_file(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key not in _digests:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
        _digests[key] = digest.hexdigest()
    return _digests[key]


def gguf_model_dir(path, *, sha256: str | None = None, name: str | None = None) -> Path:
    """The FP16 HF folder converted from GGUF file `path` (converting it on first use). sha256: the digest the
    file must have (a registry entry pins it). ValueError (one line, nothing written) for a missing, foreign,
    truncated or unsupported file."""
    path = Path(path).expanduser()
    label = name or str(path)
    if not path.is_file():
        raise ValueError(f"GGUF file not found: {path}")
    digest = sha256_file(path)
    if sha256 and digest != sha256:
        raise ValueError(f"model {label!r}: {path} has sha256 {digest[:16]}..., expected {sha256[:16]}... "
                         "(a different or damaged file); reinstall it")
    target = cache_root() / "gguf" / digest
    if _complete(target):
        return target
    gguf = GGUFFile(path)                    # everything the file can be refused for, before anything is written
    plan = _Plan(gguf)
    with _locked(target.parent / f"{digest}.lock"):
        if not _complete(target):            # another process may have finished it while we waited
            if plan.quantized:
                print(f"note: {path.name} stores quantized weights ({plan.quantized}); edgeprune dequantizes them to "
                      "FP16 (allowed by the rules, but not the original checkpoint's weights)", file=sys.stderr,
                      flush=True)
            _convert(plan, target, digest)
    return target


def _complete(target: Path) -> bool:
    try:
        return json.loads((target / SOURCE_FILE).read_text()).get("format") == FORMAT
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _locked(lock: Path):
    import fcntl
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)        # released when the file closes, also when this process dies
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---- what the file holds ---------------------------------------------------------------------------
class _Plan:
    """The config, tensor map and tokenizer settings of one GGUF file; ValueError for what cannot be converted."""

    def __init__(self, gguf: GGUFFile):
        self.gguf, arch = gguf, gguf.architecture
        if arch not in ARCHITECTURES:
            extra = (" (per-layer shapes written by edgeprune's export: convert the pruned checkpoint folder instead)"
                     if arch == "deci" else "")
            raise ValueError(f"{gguf.path}: GGUF architecture {arch!r} is not supported as input{extra}; supported: "
                             f"{', '.join(ARCHITECTURES)} (the Llama and Qwen2 families)")
        self.model_type = ARCHITECTURES[arch]
        self.config = _config(gguf, self.model_type)
        self.tensors = _tensor_map(gguf, self.config)
        types: dict[str, int] = {}
        for info in gguf.tensors:
            types[info.type_name] = types.get(info.type_name, 0) + 1
        self.types = types
        self.quantized = ", ".join(f"{k} x{v}" for k, v in sorted(types.items()) if k not in UNQUANTIZED)
        from ._gguf_tokenizer import build_tokenizer
        self.tokenizer = build_tokenizer(gguf)     # a vocabulary that cannot be rebuilt is refused before writing


def _f32(value) -> float:
    """A float stored as F32 in the file, as the shortest decimal that round-trips (1e-05, not 9.9999997e-06)."""
    return float(np.format_float_positional(np.float32(value), unique=True, trim="-"))


def _config(gguf: GGUFFile, model_type: str) -> dict:
    key = gguf.arch_key
    names = {info.name for info in gguf.tensors}
    hidden, heads = key("embedding_length"), key("attention.head_count")
    layers, ffn = key("block_count"), key("feed_forward_length")
    kv = key("attention.head_count_kv", heads)
    if not all(isinstance(v, int) and v > 0 for v in (hidden, heads, layers, ffn, kv)):
        raise ValueError(f"{gguf.path}: per-layer or missing shapes (block_count {layers}, embedding_length {hidden}, "
                         f"head_count {heads}, head_count_kv {kv}, feed_forward_length {ffn}) are not supported")
    head_dim = key("attention.key_length", hidden // heads)
    if key("attention.value_length", head_dim) != head_dim or key("rope.dimension_count", head_dim) != head_dim:
        raise ValueError(f"{gguf.path}: value length or RoPE dimensions differ from the head size {head_dim} "
                         "(not a Llama / Qwen2 layout)")
    rope = {"rope_type": "default", "rope_theta": _f32(key("rope.freq_base", 10000.0))}
    scaling = key("rope.scaling.type", "none")
    if scaling == "linear":
        rope.update(rope_type="linear", factor=_f32(key("rope.scaling.factor")))
    elif scaling not in ("none", None):
        raise ValueError(f"{gguf.path}: RoPE scaling {scaling!r} is not supported (supported: none, linear, llama3)")
    if "rope_freqs.weight" in names:
        rope = _llama3_rope(gguf, rope, head_dim)
    vocab = key("vocab_size") or _vocab_rows(gguf)
    tok = gguf.metadata
    config = {"model_type": model_type, "hidden_size": hidden, "num_attention_heads": heads,
              "num_key_value_heads": kv, "num_hidden_layers": layers, "intermediate_size": ffn, "head_dim": head_dim,
              "max_position_embeddings": key("context_length", 2048), "vocab_size": vocab,
              "rms_norm_eps": _f32(key("attention.layer_norm_rms_epsilon", 1e-6)), "rope_parameters": rope,
              "tie_word_embeddings": "output.weight" not in names, "hidden_act": "silu",
              "bos_token_id": tok.get("tokenizer.ggml.bos_token_id"), "eos_token_id": tok.get("tokenizer.ggml.eos_token_id"),
              "pad_token_id": tok.get("tokenizer.ggml.padding_token_id"), "dtype": "float16"}
    if model_type == "llama":
        config["attention_bias"] = "blk.0.attn_q.bias" in names
        config["mlp_bias"] = False
    elif "blk.0.attn_q.bias" not in names:
        raise ValueError(f"{gguf.path}: a qwen2 file without q/k/v biases is not a Qwen2 layout")
    return config


def _vocab_rows(gguf: GGUFFile) -> int:
    embedding = next((t for t in gguf.tensors if t.name == "token_embd.weight"), None)
    if embedding is None:
        raise ValueError(f"{gguf.path} has no token_embd.weight: not a complete model")
    return embedding.shape[0]


def _llama3_rope(gguf: GGUFFile, rope: dict, head_dim: int) -> dict:
    """Llama 3.x RoPE: the file stores per-frequency divisors (rope_freqs); HF stores the settings that produce
    them. Known settings are matched against the stored divisors; anything else is refused, never guessed."""
    from ._export_gguf import llama3_rope_factors
    info = next(t for t in gguf.tensors if t.name == "rope_freqs.weight")
    stored = np.asarray(gguf.tensor(info), dtype=np.float64)
    for factor, low, high, old in ((8.0, 1.0, 4.0, 8192), (32.0, 1.0, 4.0, 8192), (16.0, 1.0, 4.0, 8192)):
        params = {**rope, "rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
                  "original_max_position_embeddings": old}
        if np.allclose(llama3_rope_factors(params, head_dim), stored, rtol=1e-5):
            return params
    raise ValueError(f"{gguf.path}: rope_freqs holds RoPE factors of no known Llama 3 setting; not supported")


# ---- tensors ---------------------------------------------------------------------------------------
_GLOBAL = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}
_LAYER = {"attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
          "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
          "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
          "attn_q.bias": "self_attn.q_proj.bias", "attn_k.bias": "self_attn.k_proj.bias",
          "attn_v.bias": "self_attn.v_proj.bias", "ffn_gate.weight": "mlp.gate_proj.weight",
          "ffn_up.weight": "mlp.up_proj.weight", "ffn_down.weight": "mlp.down_proj.weight"}
_IGNORED = ("rope_freqs.weight",)      # read into the config (RoPE settings), not a weight


def _tensor_map(gguf: GGUFFile, config: dict) -> list[tuple[TensorInfo, str, int | None]]:
    """(GGUF tensor, HF name, heads to un-permute or None) for every tensor; ValueError for any it cannot place."""
    out = []
    for info in gguf.tensors:
        if info.name in _IGNORED:
            continue
        hf, heads = _GLOBAL.get(info.name), None
        if hf is None and info.name.startswith("blk."):
            _, index, rest = info.name.split(".", 2)
            if index.isdigit() and int(index) < config["num_hidden_layers"] and rest in _LAYER:
                hf = f"model.layers.{index}.{_LAYER[rest]}"
                if config["model_type"] == "llama" and rest.startswith(("attn_q.", "attn_k.")):
                    heads = config["num_attention_heads"] if rest.startswith("attn_q.") else config["num_key_value_heads"]
        if hf is None:
            raise ValueError(f"{gguf.path}: tensor {info.name!r} has no place in a {config['model_type']} model; "
                             "not supported")
        out.append((info, hf, heads))
    return out


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's interleaved RoPE pairs -> HF's rotate_half order, per head (inverse of _export_gguf's permute)."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _fp16(gguf: GGUFFile, info: TensorInfo, heads: int | None) -> np.ndarray:
    data = gguf.tensor(info)
    if heads:
        data = _unpermute(data, heads)
    if not np.isfinite(data).all() or np.abs(data).max(initial=0.0) > FP16_MAX:
        raise ValueError(f"{gguf.path}: tensor {info.name!r} holds values that are not finite or exceed FP16's range "
                         "(a corrupt file, or a model FP16 cannot hold)")
    return np.ascontiguousarray(data, dtype=np.float16)


# ---- writing the folder ----------------------------------------------------------------------------
def _convert(plan: _Plan, target: Path, digest: str) -> None:
    from transformers import AutoConfig, GenerationConfig
    from ._atomic import atomic_dir
    from ._io import portable_tokenizer_config, write_errors, write_safetensors
    from ._models import check_checkpoint
    config = dict(plan.config)
    config_obj = AutoConfig.for_model(config.pop("model_type"), **config)
    with write_errors(target), atomic_dir(target, force=True) as tmp:
        config_obj.save_pretrained(tmp)
        GenerationConfig(bos_token_id=config["bos_token_id"], eos_token_id=config["eos_token_id"],
                         pad_token_id=config["pad_token_id"]).save_pretrained(tmp)
        entries = [(hf, "F16", info.shape, lambda i=info, h=heads: _fp16(plan.gguf, i, h))
                   for info, hf, heads in plan.tensors]
        write_safetensors(tmp / "model.safetensors", entries)
        plan.tokenizer.save_pretrained(tmp)
        portable_tokenizer_config(tmp)
        check_checkpoint(tmp)                # every tensor the config implies is there, with its shape
        source = {"format": FORMAT, "file": plan.gguf.path.name, "sha256": digest,
                  "architecture": plan.gguf.architecture, "tensor_types": plan.types,
                  "dequantized": bool(plan.quantized), "name": plan.gguf.metadata.get("general.name"),
                  "license": plan.gguf.metadata.get("general.license")}
        (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")
