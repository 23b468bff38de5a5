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
import struct
import tempfile
from pathlib import Path

import torch

from . import _modeling_pruned
from ._plan import Plan

MODELING_FILE = "modeling_pruned.py"
PLAN_FILE = "plan.json"
MAX_SHARD_BYTES = 2 * 1024**3
_ST_DTYPES = {torch.float16: "F16", torch.float32: "F32", torch.bfloat16: "BF16"}


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
    """Convert `model` to `dtype` on the CPU in place (parameter by parameter) and write the directory."""
    out = check_output_dir(out, force=force)
    model.to(device="cpu", dtype=dtype)
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
        config.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        write_weights(model, tmp)
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


def write_weights(model, directory: Path, *, max_shard_bytes: int = MAX_SHARD_BYTES) -> int:
    """Stream the state dict into safetensors shards, one tensor at a time.

    save_pretrained serialises a whole shard in memory first; on a 7B model that buffer alone breaks
    the prune command's peak-memory target. Tied weights (lm_head = embeddings) are written once.
    """
    tensors, seen = {}, set()
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tensor.shape)
        if key in seen and tensor.numel():
            continue  # a tied alias: transformers re-ties it from tie_word_embeddings on load
        seen.add(key)
        tensors[name] = tensor
    shards = _plan_shards(tensors, max_shard_bytes)
    names = ["model.safetensors"] if len(shards) == 1 else \
        [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map, total = {}, 0
    for file_name, shard in zip(names, shards):
        total += _write_shard(directory / file_name, {k: tensors[k] for k in shard})
        weight_map.update({k: file_name for k in shard})
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return total


def _plan_shards(tensors: dict, max_bytes: int) -> list[list[str]]:
    shards, current, size = [], [], 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if current and size + nbytes > max_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(name)
        size += nbytes
    return shards + [current] if current else shards


def _write_shard(path: Path, tensors: dict) -> int:
    """safetensors layout: 8-byte header length, JSON header, raw little-endian tensor bytes."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # align the data section
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for t in tensors.values():
            if t.numel():
                f.write(t.detach().contiguous().view(torch.uint8).reshape(-1).numpy().data)
    return offset


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
