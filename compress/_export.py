"""`export_model(model, fmt, out)`: one entry point for every deployable format, looked up by name.

Formats: `gguf` (one llama.cpp file, F16), `hf` (the FP16 Hugging Face directory), `mlc` (the HF
directory plus the MLC LLM commands that compile it for Android; uniform shapes only).
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ._io import read_plan_record
from ._names import Registry
from ._plan import Plan

TOKENIZER_AND_CONFIG = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                        "tokenizer.model", "special_tokens_map.json", "plan.json", "modeling_pruned.py")


@dataclass(frozen=True, kw_only=True)
class ExportFormat:
    description: str
    writes: str                                  # "file" or "directory"
    export: Callable[..., Path]                  # export(model_dir, out, *, force) -> out


FORMATS: Registry[ExportFormat] = Registry("export format")


def export_model(model, fmt: str, out, *, force: bool = False) -> Path:
    """Export `model` (registry name or checkpoint directory) to `out` in format `fmt`."""
    from safetensors import SafetensorError
    spec = FORMATS.get(fmt)              # unknown formats fail first, with a did-you-mean
    try:
        return spec.export(model, out, force=force)
    except SafetensorError as err:       # exporters read the weight files directly
        raise ValueError(f"checkpoint {model} has a corrupt or truncated weight file: {err}") from None


def export_hf(model, out, *, force: bool = False) -> Path:
    """The checkpoint as an FP16 HF directory. FP16 safetensors are copied byte for byte; anything
    else is loaded in FP16 and written with save_pruned (same layout, plan.json kept)."""
    from ._io import check_output_dir, save_pruned
    from ._models import load_model, resolve_model
    out = check_output_dir(out, force=force)
    source = Path(resolve_model(model))
    if not source.is_dir():
        raise ValueError(f"export needs a local model directory, got {model!r}")
    if source.resolve() == out.resolve():
        raise ValueError("export output must differ from the model directory")
    if _all_fp16(source):
        _copy_dir(source, out, force=force)
    else:
        loaded, tokenizer = load_model(str(source), dtype="float16")
        record = read_plan_record(source)
        save_pruned(loaded, tokenizer, out, force=True, plan=Plan.from_dict(record["plan"]) if record.get("plan") else None,
                    summary=record.get("realised"))
    return out


def _all_fp16(directory: Path) -> bool:
    from safetensors import safe_open
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        return False
    for path in files:
        with safe_open(path, framework="pt") as f:
            for name in f.keys():
                if str(f.get_slice(name).get_dtype()) not in ("F16", "float16"):
                    return False
    return True


def _copy_dir(source: Path, out: Path, *, force: bool) -> None:
    """Copy into a temporary sibling, then swap it in: an interrupted export leaves no half directory."""
    from ._atomic import atomic_dir
    from ._io import write_errors
    names = [p for p in source.iterdir() if p.is_file() and
             (p.suffix == ".safetensors" or p.name.endswith(".index.json") or p.name in TOKENIZER_AND_CONFIG)]
    with write_errors(out), atomic_dir(out, force=force) as tmp:
        for path in names:
            shutil.copyfile(path, tmp / path.name)


def _gguf(model, out, *, force: bool = False) -> Path:
    from ._export_gguf import export_gguf
    return export_gguf(model, out, dtype="f16", force=force)


def _mlc(model, out, *, force: bool = False) -> Path:
    from ._export_mlc import export_mlc
    return export_mlc(model, out, force=force)


FORMATS.add("gguf", ExportFormat(description="one GGUF file (F16) for llama.cpp", writes="file", export=_gguf))
FORMATS.add("hf", ExportFormat(description="FP16 Hugging Face directory", writes="directory", export=export_hf))
FORMATS.add("mlc", ExportFormat(description="FP16 HF directory + MLC LLM (q0f16, Android) commands",
                                writes="directory", export=_mlc))

__all__ = ["ExportFormat", "FORMATS", "export_model", "export_hf"]
