"""Benchmark: llama.cpp's own buffers against the memory model, on SmolLM2-135M (dense and per-layer pruned).

    .venv/bin/python bench/llamacpp_buffers.py [--pruned DIR] [--out FILE]

For each (context, prefill chunk, flash attention) setting, the emulated backend loads the F16 GGUF (llama.cpp
reserves its KV cache and compute buffer for a whole chunk when the context is created) and reports the buffer
sizes llama.cpp logs; next to them, objectives/_memory.py's KV cache (`kv_allocated_bytes`) and activation term
(`activation_bytes`: the chunk's FP32 logits, or without flash attention the widest layer's FP32 scores + mask
when larger, plus the hidden buffers). The pruned model is cut by bench/smollm2_gguf.py's fixed plan (layers
20 and 29 (0-based, the last) dropped, layer 5 attention-free, KV groups 2 / 3 alternately): its V cache is padded to
the widest layer without flash attention. The log gives MiB to two decimals (+-5 KB).
Writes bench/results/llamacpp_buffers_smollm2.json (date, machine, commit, command, load average).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench._provenance import run_meta  # noqa: E402
from bench.smollm2_gguf import pruned_plan  # noqa: E402

RESULTS = REPO / "bench" / "results" / "llamacpp_buffers_smollm2.json"
SETTINGS = [(2048, 64, True), (2048, 64, False), (2048, 512, True), (2048, 512, False), (8192, 64, False),
            (8192, 512, True), (8192, 512, False)]


def cli(*args) -> None:
    proc = subprocess.run([sys.executable, "-m", "search", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode:
        raise SystemExit(f"{args[0]} failed:\n{proc.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pruned", default=None, help="a pruned SmolLM2 checkpoint (default: cut by the fixed plan)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    meta = run_meta()
    import compress
    import objectives
    from cluster import EmulatedBackend
    from objectives._memory import activation_bytes, kv_allocated_bytes
    work = Path(tempfile.mkdtemp(prefix="edgeprune-buffers-"))
    pruned = Path(args.pruned) if args.pruned else work / "pruned"
    if not args.pruned:
        cli("prune", "--model", "smollm2-135m", "--plan", str(pruned_plan(work / "plan.json")), "--out", str(pruned))
    models = {"dense": "smollm2-135m", "pruned": str(pruned)}
    rows = []
    base = objectives.get_profile("smollm2-135m-emulated").to_dict()
    for label, model in models.items():
        gguf = work / f"{label}.gguf"
        cli("export", "--model", model, "--format", "gguf", "--out", str(gguf))
        shapes = compress.shapes_from_config(compress.load_config(model))
        for context, chunk, flash in SETTINGS:
            profile = objectives.DeviceProfile(**{**base, "context_length": context, "prefill_chunk": chunk,
                                                  "flash_attention": flash})
            # no memory cap: what llama.cpp allocates is measured here, not whether it fits the profile's budget
            # (under the budget a 512-token chunk's compute buffer is refused and its log line never printed)
            result = EmulatedBackend.from_profile(profile, threads=1, budget_bytes=None).run(
                gguf, prompt_tokens=chunk, gen_tokens=4, repetitions=1)
            buffers = result.raw["llama_buffers"]
            kv, act = kv_allocated_bytes(shapes, profile), activation_bytes(shapes, profile)
            rows.append({"model": label, "context": context, "chunk": chunk, "flash_attention": flash,
                         "llama_buffers": buffers, "modeled_kv_bytes": kv, "modeled_activation_bytes": act,
                         "kv_error_bytes": kv - buffers["kv"], "activation_vs_compute": act / buffers["compute"] - 1,
                         "anon_growth_bytes": result.raw["anon_growth_bytes"]})
            print(json.dumps({k: rows[-1][k] for k in ("model", "context", "chunk", "flash_attention",
                                                         "kv_error_bytes", "activation_vs_compute")}), flush=True)
    out = {**meta, "load_average_at_end": list(os.getloadavg()), "pruned_checkpoint": str(pruned), "rows": rows,
           "max_abs_kv_error_bytes": max(abs(r["kv_error_bytes"]) for r in rows),
           "max_abs_activation_vs_compute": max(abs(r["activation_vs_compute"]) for r in rows)}
    from compress._atomic import write_json
    write_json(Path(args.out), out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
