"""Benchmark: prune a random-weight model with Qwen2-7B shapes in FP16, streaming layer by layer.

Target: peak RSS of the `prune` command <= 1.15 x the model's FP16 bytes. Results go to
bench/results/prune_scale.json. Needs ~16 GB RAM and ~25 GB disk; run by hand:

    .venv/bin/python bench/prune_scale.py [--work /tmp/edgeprune-bench] [--layers 28]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import Qwen2Config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._provenance import provenance  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "prune_scale.json"
QWEN2_7B = dict(hidden_size=3584, intermediate_size=18944, num_attention_heads=28, num_key_value_heads=4,
                vocab_size=152064, max_position_embeddings=32768, tie_word_embeddings=False, rope_theta=1e6)
PLAN = {"importance": "l1", "attn_unit": "kv_group"}  # layers filled in: non-uniform, one layer dropped


def write_random_checkpoint(directory: Path, layers: int) -> int:
    """Write shard per layer so the generator itself never holds the whole model."""
    config = Qwen2Config(num_hidden_layers=layers, dtype="float16", **QWEN2_7B)
    directory.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(directory)
    h, f, v = config.hidden_size, config.intermediate_size, config.vocab_size
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    weight_map, total = {}, 0

    def shard(name: str, tensors: dict):
        nonlocal total
        save_file(tensors, directory / name, metadata={"format": "pt"})
        for key, t in tensors.items():
            weight_map[key] = name
            total += t.numel() * t.element_size()

    r = lambda *s: (torch.randn(*s, dtype=torch.float32) * 0.02).half()
    shard("embed.safetensors", {"model.embed_tokens.weight": r(v, h), "model.norm.weight": torch.ones(h).half(),
                                "lm_head.weight": r(v, h)})
    for i in range(layers):
        p = f"model.layers.{i}."
        shard(f"layer{i:03d}.safetensors", {
            p + "self_attn.q_proj.weight": r(h, h), p + "self_attn.q_proj.bias": r(h),
            p + "self_attn.k_proj.weight": r(kv, h), p + "self_attn.k_proj.bias": r(kv),
            p + "self_attn.v_proj.weight": r(kv, h), p + "self_attn.v_proj.bias": r(kv),
            p + "self_attn.o_proj.weight": r(h, h),
            p + "mlp.gate_proj.weight": r(f, h), p + "mlp.up_proj.weight": r(f, h), p + "mlp.down_proj.weight": r(h, f),
            p + "input_layernorm.weight": torch.ones(h).half(), p + "post_attention_layernorm.weight": torch.ones(h).half()})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/edgeprune-bench")
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--keep", action="store_true", help="keep the generated checkpoints")
    args = ap.parse_args()
    work = Path(args.work)
    src, out = work / "qwen2-7b-random", work / "pruned"
    shutil.rmtree(work, ignore_errors=True)
    t0 = time.perf_counter()
    model_bytes = write_random_checkpoint(src, args.layers)
    gen_s = time.perf_counter() - t0
    layers = [{"attn_keep": 0.5 + 0.5 * (i % 2), "mlp_keep": 0.6 if i % 3 else 0.8} for i in range(args.layers)]
    layers[-2] = {"attn_keep": 0.0, "mlp_keep": 0.0}
    plan_path = work / "plan.json"
    plan_path.write_text(json.dumps({**PLAN, "layers": layers}))
    cmd = [sys.executable, "-m", "search", "prune", "--model", str(src), "--plan", str(plan_path), "--out", str(out)]
    t1 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    prune_s = time.perf_counter() - t1
    if proc.returncode != 0:
        raise SystemExit(f"prune failed:\n{proc.stderr[-3000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    summary = json.loads(proc.stdout)
    result = {"shapes": "Qwen2-7B (random weights)", "layers": args.layers, "model_fp16_bytes": model_bytes,
              "pruned_params": summary["params"], "pruned_fraction": summary["kept_fraction"],
              "peak_rss_bytes": peak, "peak_over_model": round(peak / model_bytes, 4), "target": 1.15,
              "meets_target": peak <= 1.15 * model_bytes, "generate_seconds": round(gen_s, 1),
              "prune_seconds": round(prune_s, 1), "date": time.strftime("%Y-%m-%d"), "cpu_count": os.cpu_count(),
              **provenance()}
    RESULTS.parent.mkdir(exist_ok=True)
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, RESULTS)
    print(json.dumps(result, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
