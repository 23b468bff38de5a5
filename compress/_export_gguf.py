"""HF checkpoint (stock or per-layer pruned) -> one GGUF file that llama.cpp loads on its own.

Architectures (facts in shared/notes/gguf-deci.md):
- uniform Llama -> `llama`, uniform Qwen2 -> `qwen2`, uniform Phi-2 -> `phi2` (stock llama.cpp graphs);
- per-layer Llama / Qwen2 -> `deci`, which builds every layer with its own head counts and FFN width.
  `llama`/`qwen2` read per-layer arrays but size every tensor from layer 0, so they refuse such files.
Two `deci` limits are worked around with exact zero blocks: an MLP-removed layer that keeps attention
gets a 1-wide all-zero FFN (n_ff = 0 would also drop the layer's attention output), and an
attention-free layer 0 gets one all-zero head (head size is read from layer 0).

Weights are streamed: tensor infos first, then one tensor at a time from the safetensors shards, so
exporting a 7B model never holds more than one tensor beyond the file being written.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ._gguf_vocab import add_vocab
from ._shapes import ModelShapes, shapes_from_config

DTYPES = {"f32": (np.float32, 0), "f16": (np.float16, 1)}   # numpy dtype, general.file_type
DEFAULT_DTYPE = "f16"
NEOX_ROPE_ARCHS = ("qwen2", "phi2")   # rotate_half order, as HF stores q/k: no row permutation
SKIPPED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclass(frozen=True, kw_only=True)
class _Tensor:
    name: str
    shape: tuple[int, ...]          # numpy order [out, in]; GGUF shows it reversed
    make: Callable[[], np.ndarray]  # produces the data (any float dtype) when the tensor is written
    keep_f32: bool                  # 1-D norms and biases stay F32 in an F16 file (llama.cpp expects it)


def export_gguf(model_dir, out_path, *, dtype: str = DEFAULT_DTYPE, force: bool = False) -> Path:
    """Write `out_path` (atomically); returns it. dtype: "f16" (default) or "f32"."""
    if dtype not in DTYPES:
        raise ValueError(f"GGUF dtype must be one of {sorted(DTYPES)} (no quantization), got {dtype!r}")
    from ._models import load_config, resolve_model
    source = Path(resolve_model(model_dir))
    if not source.is_dir():
        raise ValueError(f"GGUF export needs a local model directory, got {model_dir!r}")
    out_path = Path(out_path)
    if out_path.is_dir():
        raise ValueError(f"GGUF output {out_path} is a directory; give a file path like model.gguf")
    if out_path.exists() and not force:
        raise ValueError(f"GGUF output {out_path} exists; pass --force to replace it")
    config = load_config(str(source))
    shapes = shapes_from_config(config)
    arch = choose_arch(config, shapes)
    weights = _Weights(source)
    tensors = _tensors(arch, config, shapes, weights)
    np_dtype, file_type = DTYPES[dtype]

    import gguf
    from ._atomic import atomic_file
    from ._io import write_errors
    with write_errors(out_path), atomic_file(out_path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch)
        writer.add_name(source.name)
        writer.add_file_type(file_type)
        _add_hparams(writer, arch, config, shapes)
        add_vocab(writer, source, vocab_size=config.vocab_size)
        for t in tensors:
            out_dtype = np.float32 if t.keep_f32 else np_dtype
            nbytes = int(np.prod(t.shape)) * np.dtype(out_dtype).itemsize
            writer.add_tensor_info(t.name, t.shape, np.dtype(out_dtype), nbytes)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in tensors:
            data = np.ascontiguousarray(t.make(), dtype=np.float32 if t.keep_f32 else np_dtype)
            if data.shape != t.shape:
                raise ValueError(f"tensor {t.name}: expected shape {t.shape}, got {data.shape}")
            writer.write_tensor_data(data)
        writer.close()
    return out_path


def choose_arch(config, shapes: ModelShapes) -> str:
    """The llama.cpp architecture for this checkpoint, or a ValueError naming what is missing."""
    kind = config.model_type
    if kind == "phi":
        if not shapes.is_uniform:
            raise ValueError("not exportable to GGUF yet: per-layer Phi-2 (llama.cpp's phi2 sizes every layer from "
                             "layer 0, and deci has no LayerNorm biases / parallel block / partial RoPE)")
        return "phi2"
    if kind not in ("llama", "qwen2"):
        raise ValueError(f"not exportable to GGUF yet: model type {kind!r} (supported: llama, qwen2, phi)")
    rope = _rope(config)
    if rope["rope_type"] not in ("default", "llama3", "linear"):
        raise ValueError(f"not exportable to GGUF yet: RoPE scaling {rope['rope_type']!r}")
    if kind == "qwen2" and getattr(config, "use_sliding_window", False):
        raise ValueError("not exportable to GGUF yet: Qwen2 with sliding-window attention")
    for i, s in enumerate(shapes.layers):
        if s.has_attention and s.num_attention_heads % max(s.num_key_value_heads, 1):
            raise ValueError(f"not exportable to GGUF: layer {i} has {s.num_attention_heads} query heads for "
                             f"{s.num_key_value_heads} KV heads (llama.cpp needs equal groups)")
    if shapes.is_uniform:
        return kind
    return "deci"


# ---- hyper-parameters ------------------------------------------------------------------------------
def _rope(config) -> dict:
    """RoPE settings under transformers 5 (`rope_parameters`) or 4 (`rope_theta` + `rope_scaling`)."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    if not params:
        params = dict(getattr(config, "rope_scaling", None) or {})
        params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    params.setdefault("rope_type", params.get("type", "default"))
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    return params


def _per_layer(arch: str, shapes: ModelShapes) -> tuple[list[int], list[int], list[int]]:
    """(heads, kv heads, ffn) per layer as llama.cpp will build them, workarounds applied."""
    heads, kv, ffn = [], [], []
    for i, s in enumerate(shapes.layers):
        h, k = s.num_attention_heads, s.num_key_value_heads
        if arch == "deci" and i == 0 and not s.has_attention:
            h, k = 1, 1                      # head size is derived from layer 0: keep one zero head
        heads.append(h)
        kv.append(k)
        ffn.append(s.intermediate_size if s.has_mlp else 1)  # n_ff = 0 would drop the attention output
    return heads, kv, ffn


def _add_hparams(w, arch: str, config, shapes: ModelShapes) -> None:
    rope = _rope(config)
    heads, kv, ffn = _per_layer(arch, shapes)
    w.add_context_length(shapes.max_position_embeddings)
    w.add_embedding_length(shapes.hidden_size)
    w.add_block_count(shapes.num_layers)
    w.add_vocab_size(shapes.vocab_size)
    if arch == "deci":
        w.add_feed_forward_length(ffn)
        w.add_head_count(heads)
        w.add_head_count_kv(kv)
    else:
        w.add_feed_forward_length(ffn[0])
        w.add_head_count(heads[0])
        w.add_head_count_kv(kv[0])
    # Always explicit: otherwise llama.cpp derives the head size from layer 0, wrong once it is pruned.
    w.add_key_length(shapes.head_dim)
    w.add_value_length(shapes.head_dim)
    rot = shapes.head_dim
    if arch == "phi2":
        factor = getattr(config, "partial_rotary_factor", None) or rope.get("partial_rotary_factor", 1.0)
        rot = int(factor * shapes.head_dim)
        w.add_layer_norm_eps(float(config.layer_norm_eps))
    else:
        w.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    w.add_rope_dimension_count(rot)
    w.add_rope_freq_base(float(rope["rope_theta"]))
    if rope["rope_type"] == "linear":
        import gguf
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(rope["factor"]))


def llama3_rope_factors(rope: dict, head_dim: int) -> np.ndarray:
    """Per-frequency divisors of Llama 3.x RoPE (rope settings as `_rope` returns them), as llama.cpp's
    converter writes them (rope_freqs); compress/_gguf_input.py matches them back to the settings."""
    base, factor = float(rope["rope_theta"]), float(rope.get("factor", 8.0))
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    old_ctx = float(rope.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    wavelen = 2 * np.pi / freqs
    smooth = (old_ctx / wavelen - low) / (high - low)
    out = np.where(wavelen < old_ctx / high, 1.0,
                   np.where(wavelen > old_ctx / low, factor, 1.0 / ((1 - smooth) / factor + smooth)))
    return out.astype(np.float32)


# ---- tensors ---------------------------------------------------------------------------------------
class _Weights:
    """Tensors of a (possibly sharded) safetensors checkpoint, read one at a time as numpy (F16 stays
    F16, so an F16 export of an F16 checkpoint copies bytes; BF16, which numpy lacks, becomes F32)."""

    def __init__(self, directory: Path):
        index = directory / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.files = {name: directory / f for name, f in weight_map.items()}
        elif (directory / "model.safetensors").is_file():
            from safetensors import safe_open
            with safe_open(directory / "model.safetensors", framework="pt") as f:
                self.files = {name: directory / "model.safetensors" for name in f.keys()}
        else:
            raise ValueError(f"{directory} has no model.safetensors (GGUF export reads safetensors checkpoints)")
        self.used: set[str] = set()

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def shape(self, name: str) -> tuple[int, ...]:
        from safetensors import safe_open
        with safe_open(self.files[name], framework="pt") as f:
            return tuple(f.get_slice(name).get_shape())

    def loader(self, name: str, transform=None) -> Callable[[], np.ndarray]:
        if name not in self.files:
            raise ValueError(f"checkpoint is missing tensor {name}")
        self.used.add(name)

        def load() -> np.ndarray:
            from safetensors import safe_open
            with safe_open(self.files[name], framework="pt") as f:
                tensor = f.get_tensor(name)
                data = (tensor if tensor.dtype in (torch.float16, torch.float32) else tensor.float()).numpy()
            return transform(data) if transform else data
        return load

    def unused(self) -> list[str]:
        return sorted(n for n in self.files if n not in self.used and not n.endswith(SKIPPED_SUFFIXES))


def _permute_rope(n_head: int) -> Callable[[np.ndarray], np.ndarray]:
    """HF's rotate_half row order -> interleaved pairs (Meta order), per head, for NORM-RoPE archs."""
    def permute(w: np.ndarray) -> np.ndarray:
        return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
                .swapaxes(1, 2).reshape(w.shape))
    return permute


def _const(shape, value: float) -> Callable[[], np.ndarray]:
    return lambda: np.full(shape, value, dtype=np.float32)


def _tensors(arch: str, config, shapes: ModelShapes, weights: _Weights) -> list[_Tensor]:
    out: list[_Tensor] = []

    def add(gguf_name: str, hf_name: str | None = None, *, transform=None, make=None, shape=None) -> None:
        if make is None:
            shape = weights.shape(hf_name)
            make = weights.loader(hf_name, transform)
        out.append(_Tensor(name=gguf_name, shape=tuple(shape), make=make, keep_f32=len(shape) == 1))

    def add_optional(gguf_name: str, hf_name: str, transform=None) -> None:
        if hf_name in weights:
            add(gguf_name, hf_name, transform=transform)

    hidden, head_dim = shapes.hidden_size, shapes.head_dim
    add("token_embd.weight", "model.embed_tokens.weight")
    if arch == "phi2":
        add("output_norm.weight", "model.final_layernorm.weight")
        add("output_norm.bias", "model.final_layernorm.bias")
    else:
        add("output_norm.weight", "model.norm.weight")
    if not shapes.tie_word_embeddings:
        add("output.weight", "lm_head.weight")
        add_optional("output.bias", "lm_head.bias")
    elif "lm_head.weight" in weights:
        weights.used.add("lm_head.weight")   # some checkpoints store the tied copy too: llama.cpp re-ties it
    if arch in ("llama", "deci") and _rope(config)["rope_type"] == "llama3":
        factors = llama3_rope_factors(_rope(config), head_dim)
        add("rope_freqs.weight", make=lambda: factors, shape=factors.shape)

    heads, kv, ffn = _per_layer(arch, shapes)
    for i, s in enumerate(shapes.layers):
        hf, blk = f"model.layers.{i}", f"blk.{i}"
        if arch == "phi2":
            _phi_layer(add, hf, blk)
            continue
        permute = arch not in NEOX_ROPE_ARCHS
        q_perm = _permute_rope(heads[i]) if permute else None
        k_perm = _permute_rope(kv[i]) if permute else None
        if s.has_attention:
            add(f"{blk}.attn_norm.weight", f"{hf}.input_layernorm.weight")
            for part, perm in (("q", q_perm), ("k", k_perm), ("v", None)):
                add(f"{blk}.attn_{part}.weight", f"{hf}.self_attn.{part}_proj.weight", transform=perm)
                add_optional(f"{blk}.attn_{part}.bias", f"{hf}.self_attn.{part}_proj.bias", perm)
            add(f"{blk}.attn_output.weight", f"{hf}.self_attn.o_proj.weight")
            add_optional(f"{blk}.attn_output.bias", f"{hf}.self_attn.o_proj.bias")
        elif heads[i]:   # deci layer-0 workaround: one all-zero head, exactly a removed attention
            add(f"{blk}.attn_norm.weight", make=_const((hidden,), 1.0), shape=(hidden,))
            for part in ("q", "k", "v"):
                add(f"{blk}.attn_{part}.weight", make=_const((head_dim, hidden), 0.0), shape=(head_dim, hidden))
            add(f"{blk}.attn_output.weight", make=_const((hidden, head_dim), 0.0), shape=(hidden, head_dim))
        if s.has_mlp:
            add(f"{blk}.ffn_norm.weight", f"{hf}.post_attention_layernorm.weight")
            add(f"{blk}.ffn_gate.weight", f"{hf}.mlp.gate_proj.weight")
            add(f"{blk}.ffn_up.weight", f"{hf}.mlp.up_proj.weight")
            add(f"{blk}.ffn_down.weight", f"{hf}.mlp.down_proj.weight")
            add_optional(f"{blk}.ffn_down.bias", f"{hf}.mlp.down_proj.bias")
        else:            # a 1-wide all-zero FFN adds exactly nothing (see module docstring)
            add(f"{blk}.ffn_norm.weight", make=_const((hidden,), 1.0), shape=(hidden,))
            add(f"{blk}.ffn_gate.weight", make=_const((ffn[i], hidden), 0.0), shape=(ffn[i], hidden))
            add(f"{blk}.ffn_up.weight", make=_const((ffn[i], hidden), 0.0), shape=(ffn[i], hidden))
            add(f"{blk}.ffn_down.weight", make=_const((hidden, ffn[i]), 0.0), shape=(hidden, ffn[i]))
    unused = weights.unused()
    if unused:
        raise ValueError(f"not exportable to GGUF yet: no {arch} tensor for {', '.join(unused[:5])}"
                         + (f" (+{len(unused) - 5} more)" if len(unused) > 5 else ""))
    return out


def _phi_layer(add, hf: str, blk: str) -> None:
    """Phi-2: one LayerNorm feeds attention and MLP in parallel; every projection has a bias."""
    add(f"{blk}.attn_norm.weight", f"{hf}.input_layernorm.weight")
    add(f"{blk}.attn_norm.bias", f"{hf}.input_layernorm.bias")
    for part in ("q", "k", "v"):
        add(f"{blk}.attn_{part}.weight", f"{hf}.self_attn.{part}_proj.weight")
        add(f"{blk}.attn_{part}.bias", f"{hf}.self_attn.{part}_proj.bias")
    add(f"{blk}.attn_output.weight", f"{hf}.self_attn.dense.weight")
    add(f"{blk}.attn_output.bias", f"{hf}.self_attn.dense.bias")
    add(f"{blk}.ffn_up.weight", f"{hf}.mlp.fc1.weight")
    add(f"{blk}.ffn_up.bias", f"{hf}.mlp.fc1.bias")
    add(f"{blk}.ffn_down.weight", f"{hf}.mlp.fc2.weight")
    add(f"{blk}.ffn_down.bias", f"{hf}.mlp.fc2.bias")
