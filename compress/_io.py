"""Save pruned checkpoints: a complete HF directory (FP16 safetensors, config, tokenizer, generation
config) plus plan.json with the realised shapes. Non-uniform shapes ship `modeling_pruned.py` and
an `auto_map`, so plain transformers loads them with trust_remote_code=True.

Writes go to a temporary sibling directory that replaces the target only when complete, so an
interrupted save never leaves a half-written checkpoint and never destroys what was there.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from . import _modeling_pruned
from ._plan import Plan

MODELING_FILE = "modeling_pruned.py"
PLAN_FILE = "plan.json"


def check_output_dir(out: str | os.PathLike, *, force: bool) -> Path:
    """Refuse a non-empty directory (or a file) unless force; raise before any work is done."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ValueError(f"output directory {out} is not empty; pass --force to replace it")
    return out


def save_pruned(model, tokenizer, out: str | os.PathLike, *, plan: Plan | None = None, summary: dict | None = None,
                force: bool = False, dtype: torch.dtype = torch.float16) -> Path:
    """Convert `model` to `dtype` in place (parameter by parameter) and write the directory."""
    out = check_output_dir(out, force=force)
    model.to(dtype)
    config = model.config
    config.dtype = dtype
    non_uniform = bool(getattr(config, "layer_shapes", None))
    if non_uniform:
        cls = _modeling_pruned.PRUNED_CLASSES[config.model_type].__name__
        config.auto_map = {"AutoModelForCausalLM": f"{MODELING_FILE[:-3]}.{cls}"}
    elif hasattr(config, "auto_map"):
        del config.auto_map
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp, max_shard_size="2GB")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if non_uniform:
            shutil.copyfile(_modeling_pruned.__file__, tmp / MODELING_FILE)
        record = {"plan": plan.to_dict() if plan else None, "realised": summary or {}}
        (tmp / PLAN_FILE).write_text(json.dumps(record, indent=2))
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _replace_dir(new: Path, target: Path) -> None:
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)


def read_plan_record(directory: str | os.PathLike) -> dict:
    path = Path(directory) / PLAN_FILE
    return json.loads(path.read_text()) if path.is_file() else {}
