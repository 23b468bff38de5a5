"""MLC LLM export: the FP16 HF directory plus the exact commands that compile it for an Android phone.

MLC LLM's model definitions (llama, qwen2, phi) build every layer from one set of config sizes, so
only uniformly pruned checkpoints (no per-layer shapes, no removed sub-block) can be compiled. The
check names each layer that differs from the most common shape, and how.

MLC itself is not a dependency: it needs a TVM build and the Android NDK. The commands are written
next to the weights (README-mlc.md, mlc_commands.sh) to run on a machine that has them.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from ._shapes import LayerShape, ModelShapes, shapes_from_config

QUANTIZATION = "q0f16"          # FP16 weights, no quantization (competition rule)
DEFAULT_DEVICE = "android"
MLC_MODEL_TYPES = ("llama", "qwen2", "phi")
HF_SUBDIR, MLC_SUBDIR = "hf", "mlc"


def check_mlc(config) -> ModelShapes:
    """Shapes of a checkpoint MLC can compile, else a ValueError naming the offending layers."""
    if config.model_type not in MLC_MODEL_TYPES:
        raise ValueError(f"not MLC-compatible: model type {config.model_type!r} "
                         f"(supported: {', '.join(MLC_MODEL_TYPES)})")
    shapes = shapes_from_config(config)
    if shapes.is_uniform:
        return shapes
    common, _ = Counter(s for s in shapes.layers if s.has_attention and s.has_mlp).most_common(1)[0] \
        if any(s.has_attention and s.has_mlp for s in shapes.layers) else (None, 0)
    problems = [f"layer {i}: {_describe(s, common)}" for i, s in enumerate(shapes.layers) if s != common]
    reference = f"most layers have {_shape_text(common)}" if common else "no layer keeps both sub-blocks"
    raise ValueError("not MLC-compatible: MLC LLM builds every layer with the same shapes, but "
                     + "; ".join(problems) + f" ({reference}); export to GGUF (llama.cpp) instead, "
                     "or search with --runtime mlc for uniform candidates")


def _shape_text(s: LayerShape) -> str:
    return f"{s.num_attention_heads} heads / {s.num_key_value_heads} KV heads / FFN {s.intermediate_size}"


def _describe(s: LayerShape, common: LayerShape | None) -> str:
    if not s.has_attention:
        return "attention removed"
    if not s.has_mlp:
        return "MLP removed"
    if common is None:
        return _shape_text(s)
    diffs = [f"{label} {mine} (not {theirs})" for label, mine, theirs in (
        ("heads", s.num_attention_heads, common.num_attention_heads),
        ("KV heads", s.num_key_value_heads, common.num_key_value_heads),
        ("FFN", s.intermediate_size, common.intermediate_size)) if mine != theirs]
    return ", ".join(diffs)


def conv_template(config) -> str:
    """MLC's chat template for the family; `LM` (plain completion) for the bundled story model."""
    if config.model_type == "qwen2":
        return "qwen2"
    if config.model_type == "phi":
        return "phi-2"
    if config.vocab_size >= 128000:
        return "llama-3_1"
    if config.vocab_size == 32000:
        return "llama-2"
    return "LM"


def export_mlc(model_dir, out_dir, *, force: bool = False, device: str = DEFAULT_DEVICE,
               template: str | None = None) -> Path:
    """out_dir/hf (FP16 HF directory), out_dir/README-mlc.md and out_dir/mlc_commands.sh."""
    from ._atomic import atomic_dir
    from ._export import export_hf
    from ._io import check_output_dir, write_errors
    from ._models import load_config
    out_dir = check_output_dir(out_dir, force=force)
    config = load_config(model_dir)
    shapes = check_mlc(config)     # refuse before anything is written
    with write_errors(out_dir), atomic_dir(out_dir, force=force) as tmp:
        export_hf(model_dir, tmp / HF_SUBDIR)
        _stock_config(tmp / HF_SUBDIR / "config.json", shapes)
        commands = mlc_commands(out_dir, config, device=device, template=template or conv_template(config))
        (tmp / "mlc_commands.sh").write_text(commands)
        (tmp / "mlc_commands.sh").chmod(0o755)
        (tmp / "README-mlc.md").write_text(_readme(commands))
    return out_dir


def _stock_config(path: Path, shapes: ModelShapes) -> None:
    """MLC reads the stock config fields only. A uniform checkpoint saved in the per-layer format (its head
    count does not divide the hidden size, which transformers refuses) gets them back, head_dim explicit."""
    import json
    config = json.loads(path.read_text())
    if not config.get("layer_shapes"):
        return
    first = shapes.layers[0]
    config.update(num_attention_heads=first.num_attention_heads, num_key_value_heads=first.num_key_value_heads,
                  intermediate_size=first.intermediate_size, head_dim=shapes.head_dim)
    for key in ("layer_shapes", "auto_map"):
        config.pop(key, None)
    path.write_text(json.dumps(config, indent=2))


def mlc_commands(out_dir: Path, config, *, device: str, template: str) -> str:
    out_dir = Path(out_dir).resolve()
    hf, mlc = out_dir / HF_SUBDIR, out_dir / MLC_SUBDIR
    context = int(getattr(config, "max_position_embeddings", 2048))
    lib = mlc / f"model-{QUANTIZATION}-{device}.tar"
    return "\n".join([
        "#!/bin/sh",
        "# Compile the FP16 checkpoint with MLC LLM (needs mlc_llm + TVM; --device android needs the NDK).",
        "set -e",
        f"mlc_llm convert_weight {hf} --quantization {QUANTIZATION} -o {mlc}",
        f"mlc_llm gen_config {hf} --quantization {QUANTIZATION} --conv-template {template} "
        f"--context-window-size {context} -o {mlc}",
        f"mlc_llm compile {mlc}/mlc-chat-config.json --device {device} -o {lib}",
        "",
    ])


def _readme(commands: str) -> str:
    return (
        "# MLC LLM export\n\n"
        f"`{HF_SUBDIR}/` holds the FP16 Hugging Face checkpoint (uniform shapes, checked at export).\n"
        f"Run on a machine with MLC LLM installed (weights and config go to `{MLC_SUBDIR}/`):\n\n"
        f"```sh\n{commands}```\n\n"
        f"`{QUANTIZATION}` keeps the weights in FP16: no quantization, as the competition rules require.\n"
        "Bundle the library and weights into the Android app with `mlc_llm package` (see the MLC LLM docs).\n"
    )
