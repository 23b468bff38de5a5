"""Save pruned checkpoints: a complete HF directory (FP16 safetensors, config, tokenizer, generation
config) plus plan.json with the realised shapes. Non-uniform shapes ship `modeling_pruned.py` and
an `auto_map`, so plain transformers loads them with trust_remote_code=True; plan.json records that
file's sha256, and `check_remote_code` refuses to trust a directory whose code is not byte for byte
what we wrote.

Writes go through compress._atomic (a temporary sibling directory replaces the target only when
complete), so an interrupted save never leaves a half-written checkpoint and never destroys what was
there. A failed write (disk full, permissions) is one line naming the target.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import struct
from pathlib import Path

import torch

from . import _modeling_pruned
from ._atomic import atomic_dir, check_dir_target
from ._plan import Plan

MODELING_FILE = "modeling_pruned.py"
PLAN_FILE = "plan.json"
MODELING_HASH_KEY = "modeling_sha256"
MAX_SHARD_BYTES = 2 * 1024**3
_ST_DTYPES = {torch.float16: "F16", torch.float32: "F32", torch.bfloat16: "BF16"}


def check_output_dir(out: str | os.PathLike, *, force: bool) -> Path:
    """Refuse a non-empty directory (or a file) unless force; raise before any work is done."""
    return check_dir_target(out, force=force)


@contextlib.contextmanager
def write_errors(target):
    """An OSError while writing `target` (disk full, read-only, permissions) becomes one ValueError line;
    the atomic writers guarantee nothing at `target` changed."""
    try:
        yield
    except OSError as err:
        reason = err.strerror or str(err) or type(err).__name__
        raise ValueError(f"cannot write {target}: {reason}; nothing was changed") from None


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
    with write_errors(out), atomic_dir(out, force=force) as tmp:
        config.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        write_weights(model, tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
            portable_tokenizer_config(tmp)
        record = {"plan": plan.to_dict() if plan else None, "realised": summary or {}}
        if non_uniform:
            shutil.copyfile(_modeling_pruned.__file__, tmp / MODELING_FILE)
            record[MODELING_HASH_KEY] = sha256_of(tmp / MODELING_FILE)
        (tmp / PLAN_FILE).write_text(json.dumps(record, indent=2))
    return out


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_remote_code(directory: str | os.PathLike) -> bool:
    """May `directory` be loaded with trust_remote_code=True? True when its only remote code is
    modeling_pruned.py exactly as save_pruned wrote it (sha256 recorded in plan.json); False when it
    has no remote code at all; otherwise a one-line ValueError (never run code we did not write)."""
    directory = Path(directory)
    modules = _auto_map_modules(directory)
    if not modules and not (directory / MODELING_FILE).exists():
        return False
    foreign = sorted(modules - {MODELING_FILE[:-3]})
    if foreign:
        raise ValueError(f"{directory} asks for remote code edgeprune did not write ({', '.join(foreign)}); "
                         "refusing to load it with trust_remote_code")
    recorded = read_plan_record(directory).get(MODELING_HASH_KEY)
    if not recorded:
        raise ValueError(f"{directory / MODELING_FILE} has no sha256 in {PLAN_FILE}: not written by edgeprune "
                         "(or saved by an older version); refusing to run it with trust_remote_code; re-save it")
    actual = sha256_of(directory / MODELING_FILE)
    if actual != recorded:
        raise ValueError(f"{directory / MODELING_FILE} was modified after edgeprune wrote it (sha256 {actual[:12]}..., "
                         f"recorded {recorded[:12]}...); refusing to run it with trust_remote_code")
    return True


def _auto_map_modules(directory: Path) -> set[str]:
    """Python modules the directory's configs point transformers at (auto_map, tokenizer included);
    a reference into another repository ("repo--module.Class") is returned whole, so it never matches."""
    modules = set()
    for name in ("config.json", "tokenizer_config.json"):
        try:
            data = json.loads((directory / name).read_text()) if (directory / name).is_file() else {}
        except (OSError, ValueError) as err:
            raise ValueError(f"{directory / name} cannot be read: {err}") from None
        for ref in (data.get("auto_map") or {}).values() if isinstance(data, dict) else ():
            for item in ref if isinstance(ref, (list, tuple)) else [ref]:
                if isinstance(item, str):
                    modules.add(item if "--" in item else item.rsplit(".", 1)[0])
    return modules


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
    entries = [(name, _ST_DTYPES[t.dtype], tuple(t.shape), lambda t=t: t.detach().contiguous().view(torch.uint8))
               for name, t in tensors.items()]
    return write_safetensors(path, entries)


def write_safetensors(path: Path, entries) -> int:
    """safetensors layout: 8-byte header length, JSON header, raw little-endian tensor bytes.

    entries: (name, safetensors dtype, shape, make) with make() returning the tensor's bytes (a uint8
    tensor or numpy array, or anything with the buffer protocol), called in order while the file is
    written, so only one tensor is ever held beyond the file. Returns the data section's size."""
    itemsize = {"F16": 2, "BF16": 2, "F32": 4}
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, dtype, shape, _ in entries:
        nbytes = itemsize[dtype] * math.prod(shape)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # align the data section
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, _, _, make in entries:
            begin, end = header[name]["data_offsets"]
            if end == begin:
                continue
            data = make()
            data = data.reshape(-1).numpy() if isinstance(data, torch.Tensor) else data
            view = memoryview(data).cast("B")
            if len(view) != end - begin:
                raise ValueError(f"tensor {name}: {len(view)} bytes, expected {end - begin}")
            f.write(view)
    return offset


def read_plan_record(directory: str | os.PathLike) -> dict:
    path = Path(directory) / PLAN_FILE
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} cannot be read: {err}") from None
    return record if isinstance(record, dict) else {}


# transformers 5 names its generic fast tokenizer "TokenizersBackend" and records how it was loaded;
# transformers 4 (the competition kit's OpenCompass era) knows neither, so AutoTokenizer would fail there.
# "PreTrainedTokenizerFast" is the same tokenizer.json-backed class in both.
_V5_ONLY_CLASSES = {"TokenizersBackend": "PreTrainedTokenizerFast"}
_LOAD_TIME_KEYS = ("is_local", "local_files_only")


def portable_tokenizer_config(directory) -> None:
    path = Path(directory) / "tokenizer_config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text())
    config["tokenizer_class"] = _V5_ONLY_CLASSES.get(config.get("tokenizer_class"), config.get("tokenizer_class"))
    for key in _LOAD_TIME_KEYS:
        config.pop(key, None)
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")

