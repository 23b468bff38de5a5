"""Measure a model's real peak inference memory with PyTorch, to check the memory model against.

`measure_peak_memory` runs this file as a subprocess (`python -m objectives._measure`), so the parent's
memory never mixes in. The child:

  1. imports torch / transformers and runs a throwaway tiny model of the same family through the same
     code path, so the libraries' code pages and lazily created state are resident before the
     baseline is taken (otherwise a first matmul adds tens of MB that belong to no model term);
  2. builds the model (random weights from a config, or a checkpoint directory) in FP16 when this CPU
     runs FP16 matmuls at a usable speed, else FP32;
  3. resets the kernel's peak-RSS counter (/proc/self/clear_refs "5"), so transient copies made while
     building the model do not count: the runtime loads weights once, the question is inference;
  4. fills a static KV cache of `context` tokens: a prefill of `prefill_chunk` tokens, more chunks of
     the same size (a chunked prefill: the same KV bytes as decoding token by token, in seconds
     instead of minutes), then one single-token decode step. Logits of every chunk position go to a
     preallocated FP32 buffer, as the memory model assumes;
  5. prints peak RSS (VmHWM) minus the baseline as JSON.

glibc's malloc runs with a fixed mmap threshold (MALLOC_MMAP_THRESHOLD_=64 KiB). By default the
threshold grows to the largest freed block (up to 32 MiB) and freed heap memory is kept up to twice
that before it is returned, so peak RSS would carry tens of MB of *freed* activation buffers; a
llama.cpp-style runtime plans one compute buffer instead. On bench/memory_model.py the default policy
(with 8192-row LM-head slices) left the peak 12-40 MB above the model (Llama-213M FP16: -6.6 %); with
the fixed threshold and 2048-row slices the rest is 3-8 MB (-1.0 %).

Grouped-query attention runs through SDPA's `enable_gqa` (TRANSFORMERS_SDPA_FORCE_GQA=1). Without it,
transformers copies K and V up to the full head count on CPU whenever there is a mask (always, with a
static cache): 2 x heads x context x head_dim values per layer that llama.cpp / ExecuTorch never
allocate, so the measurement would include a PyTorch artefact the memory model rightly leaves out.

The peak is read from VmHWM, not `ru_maxrss`: a child started by vfork/exec inherits the parent's
high-water mark in ru_maxrss (Linux copies the old mm's hiwater into signal->maxrss at exec), so
under pytest it would report the parent's size.

`compare_memory` puts the measurement next to `estimate_memory` for the same shapes. The profile's
runtime overhead is left out (it is the phone runtime's, not PyTorch's). When the run was FP32 the
prediction is made for 4-byte weights, KV and activations, i.e. those terms doubled, while the logits
term stays as it is (FP32 in both).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_TIMEOUT = 900              # seconds for one measurement subprocess
LOGIT_SLICE = 2048                 # vocabulary rows per LM-head slice written into the FP32 logits buffer
FP16_MAX_SLOWDOWN = 4.0            # FP16 linear slower than this x FP32: no usable FP16 path (those are ~100x)
WARMUP_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=256, max_position_embeddings=256)
PROJECT_ROOT = Path(__file__).resolve().parents[1]


# ---- parent side -------------------------------------------------------------------------------------
def measure_peak_memory(model, *, context: int, prefill_chunk: int, dtype: str = "auto",
                        timeout: float = DEFAULT_TIMEOUT) -> dict:
    """Peak inference memory of `model` (a HF config -> random weights, or a checkpoint directory).

    Returns {"measured_bytes", "weights_bytes", "after_run_bytes", "dtype", "param_bytes",
    "baseline_rss_bytes", "peak_source", "seconds"}: `weights_bytes` is RSS growth from building the
    model, `after_run_bytes` RSS growth still held after the run (KV cache + logits buffer).
    """
    _check_positive(context=context, prefill_chunk=prefill_chunk)
    if dtype not in ("auto", "float16", "float32"):
        raise ValueError(f"dtype must be auto, float16 or float32, got {dtype!r}")
    with tempfile.TemporaryDirectory(prefix="measure-") as tmp:
        if isinstance(model, (str, os.PathLike)):
            import compress
            source, random_weights = compress.resolve_model(model), False    # registry name, dir or HF id
        elif hasattr(model, "save_pretrained") and hasattr(model, "model_type"):
            model.save_pretrained(tmp)        # a PretrainedConfig: layer_shapes and all extras survive
            source, random_weights = tmp, True
        else:
            raise ValueError(f"measure a model directory / name or a transformers config, got {type(model).__name__}")
        cmd = [sys.executable, "-m", "objectives._measure", "--source", source, "--context", str(context),
               "--prefill-chunk", str(prefill_chunk), "--dtype", dtype] + (["--random"] if random_weights else [])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")]),
               "TRANSFORMERS_SDPA_FORCE_GQA": "1", "MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"memory measurement failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare_memory(model, *, context: int | None = None, prefill_chunk: int | None = None, profile=None,
                   dtype: str = "auto", timeout: float = DEFAULT_TIMEOUT) -> dict:
    """Predicted (`estimate_memory`, overhead excluded) vs measured peak memory for the same shapes.

    Context and prefill chunk come from the arguments, else from `profile` (a DeviceProfile or name).
    """
    import compress
    from dataclasses import replace

    from ._memory import estimate_memory
    from ._profiles import get_profile

    base = get_profile(profile or "phone-12gb")
    context = base.context_length if context is None else context
    prefill_chunk = base.prefill_chunk if prefill_chunk is None else prefill_chunk
    config = compress.load_config(model) if isinstance(model, (str, os.PathLike)) else model
    shapes = compress.shapes_from_config(config)
    measured = measure_peak_memory(model, context=context, prefill_chunk=prefill_chunk, dtype=dtype, timeout=timeout)
    width = 4 if measured["dtype"] == "float32" else 2
    # no budget to speak of: the largest a profile accepts
    settings = replace(base, name="pytorch-cpu", memory_budget_bytes=2**50, runtime_overhead_bytes=0,
                       context_length=context, prefill_chunk=prefill_chunk, bytes_per_weight=width,
                       kv_bytes_per_value=width)
    est = estimate_memory(shapes, settings)
    predicted = est.total_bytes
    note = ("FP32 run: weights, KV and hidden-state activations predicted at 4 bytes (2x the FP16 model); "
            "logits are FP32 in both" if width == 4 else "FP16 run: compared as is")
    return {"context": context, "prefill_chunk": prefill_chunk, "dtype": measured["dtype"], "note": note,
            "params": shapes.param_count(), "predicted_bytes": predicted, "measured_bytes": measured["measured_bytes"],
            "relative_error": (predicted - measured["measured_bytes"]) / measured["measured_bytes"],
            "predicted": {"weight_bytes": est.weight_bytes, "kv_cache_bytes": est.kv_cache_bytes,
                          "activation_bytes": est.activation_bytes},
            "measured": measured}


def _check_positive(**values):
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


# ---- child side --------------------------------------------------------------------------------------
def _status_bytes(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(found.group(1)) * 1024 if found else None


def _rss() -> int:
    rss = _status_bytes("VmRSS")
    if rss is None:
        import psutil
        rss = psutil.Process().memory_info().rss
    return rss


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _trim() -> None:
    """Collect garbage and hand freed heap back to the OS, so RSS reflects live tensors only."""
    import ctypes
    import gc
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def pick_dtype(requested: str):
    """FP16 when this CPU runs an FP16 linear layer (the op that dominates a forward) within
    FP16_MAX_SLOWDOWN of FP32; some CPUs have only a reference FP16 path, hundreds of times slower."""
    import torch
    import torch.nn.functional as F
    if requested != "auto":
        return getattr(torch, requested)
    x32, w32 = torch.randn(256, 1024), torch.randn(1024, 1024)
    try:
        x16, w16 = x32.half(), w32.half()
        F.linear(x16, w16)
    except RuntimeError:
        return torch.float32

    def seconds(x, w):
        best = float("inf")
        for _ in range(5):                      # best of 5: other processes share the cores
            start = time.perf_counter()
            F.linear(x, w)
            best = min(best, time.perf_counter() - start)
        return best
    return torch.float16 if seconds(x16, w16) <= FP16_MAX_SLOWDOWN * seconds(x32, w32) else torch.float32


def build_model(config, dtype):
    from transformers import AutoModelForCausalLM
    if getattr(config, "layer_shapes", None):
        from compress._modeling_pruned import PRUNED_CLASSES
        return PRUNED_CLASSES[config.model_type]._from_config(config, dtype=dtype).eval()
    return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


def run_inference(model, *, context: int, prefill_chunk: int):
    """Fill a static KV cache of `context` tokens (chunked prefill, then one decode step).

    Returns (cache, logits buffer) so the caller can see what stays resident."""
    import torch
    import torch.nn.functional as F
    from transformers import StaticCache

    cache = StaticCache(config=model.config, max_cache_len=context)
    head = model.get_output_embeddings()
    vocab = head.weight.shape[0]
    logits = torch.empty(min(prefill_chunk, context), vocab, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    steps, pos = [], 0
    while pos < context - 1:
        steps.append((pos, min(prefill_chunk, context - 1 - pos)))
        pos += steps[-1][1]
    steps.append((context - 1, 1))                        # the decode step
    with torch.inference_mode():
        for start, n in steps:
            ids = torch.randint(0, vocab, (1, n), generator=gen)
            hidden = model.model(input_ids=ids, cache=cache, use_cache=True,
                                 cache_position=torch.arange(start, start + n)).last_hidden_state[0]
            for lo in range(0, vocab, LOGIT_SLICE):
                bias = head.bias[lo:lo + LOGIT_SLICE] if head.bias is not None else None
                logits[:n, lo:lo + LOGIT_SLICE] = F.linear(hidden, head.weight[lo:lo + LOGIT_SLICE], bias)
            del hidden
    return cache, logits


def _warm_up(model_type: str, dtype, from_disk: bool) -> None:
    """Run a tiny model of the family through the same path (saved and reloaded when the real one is
    loaded from disk: the loader's modules and code pages are then resident before the baseline too)."""
    from transformers import AutoConfig
    shape = dict(WARMUP_SHAPE)
    if model_type == "phi":
        shape["num_key_value_heads"] = shape["num_attention_heads"]
    model = build_model(AutoConfig.for_model(model_type, **shape), dtype)
    if from_disk:
        import compress
        with tempfile.TemporaryDirectory(prefix="warm-up-") as tmp:
            model.save_pretrained(tmp)
            model, _ = compress.load_model(tmp, dtype=dtype)
    run_inference(model, context=32, prefill_chunk=8)


def _child(args) -> dict:
    import torch
    from transformers import AutoConfig

    torch.manual_seed(0)
    dtype = pick_dtype(args.dtype)
    config = AutoConfig.from_pretrained(args.source)
    _warm_up(config.model_type, dtype, from_disk=not args.random)
    _trim()
    baseline = _rss()
    start = time.perf_counter()
    if args.random:
        model = build_model(config, dtype)
    else:
        import compress
        model, _ = compress.load_model(args.source, dtype=dtype)
        # Loaded tensors may still be views of the mmapped safetensors file, paged in lazily as the run
        # touches them (and the untied input table only row by row). Copy them into private memory so
        # the weights are resident up front, as with random weights; shared (tied) tensors copy once.
        with torch.no_grad():
            for param in model.parameters():
                param.data = param.data.clone()
    _trim()
    after_build = _rss()
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())   # tied tensors once
    reset = _reset_peak()
    held = run_inference(model, context=args.context, prefill_chunk=args.prefill_chunk)
    peak = _status_bytes("VmHWM") if reset else None
    source = "VmHWM"
    if peak is None:                   # no /proc: ru_maxrss, which also counts model building
        import resource
        peak, source = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ru_maxrss"
    _trim()
    after_run = _rss()
    del held
    return {"measured_bytes": peak - baseline, "weights_bytes": after_build - baseline,
            "after_run_bytes": after_run - baseline, "dtype": str(dtype).replace("torch.", ""),
            "param_bytes": param_bytes, "baseline_rss_bytes": baseline, "peak_source": source,
            "seconds": round(time.perf_counter() - start, 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m objectives._measure", description=__doc__.splitlines()[0])
    p.add_argument("--source", required=True, help="directory holding config.json (and weights unless --random)")
    p.add_argument("--random", action="store_true", help="random weights from the config")
    p.add_argument("--context", type=int, required=True)
    p.add_argument("--prefill-chunk", type=int, required=True)
    p.add_argument("--dtype", default="auto", choices=("auto", "float16", "float32"))
    args = p.parse_args(argv)
    print(json.dumps(_child(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
