"""Benchmark: SmolLM2-135M from its shipped GGUF file through the product's GGUF path (issue 22).

    .venv/bin/python bench/smollm2_gguf.py [--conversions 3] [--checkpoint DIR ...] [--out FILE]

1. Conversion of the shipped Q4_1 file (`--model smollm2-135m`) into an FP16 folder, in a fresh cache, in a child
   process: wall time of the conversion, the process's peak resident memory (VmHWM) and its growth over what the
   imports took; medians over `--conversions` runs. Targets: <= 60 s, peak <= 3 x the FP16 model's bytes.
2. `export --format gguf` of the dense model and of per-layer pruned candidates: by default one cut by a fixed
   plan (`prune`, activation criterion, reconstruction; layers 20 and 29 (0-based, the last) dropped, an attention-free
   and an MLP-free layer, KV groups and FFN widths cut alternately), plus any `--checkpoint DIR` (e.g. a search's
   top candidates).
3. llama.cpp (llama-cpp-python) against transformers on each GGUF: tokenization of every held-out C4 line (the
   bundled documents 240-299, 502 lines) plus Unicode / code / number lines; logits of 8 held-out lines (128
   tokens each) with llama.cpp's exact settings (F32 KV cache, no flash attention) and with the emulated
   device's (F16 KV, flash attention), against transformers in FP32 on the same FP16 weights, next to what
   transformers itself computes in FP16 (the FP16 tolerance the target names); greedy generation of 32 tokens
   from 10 prompts (5 chat-template questions, 5 held-out C4 openings). Target: identical tokens everywhere.
Writes bench/results/smollm2_gguf.json (date, machine, commit, command, load average).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench._provenance import run_meta  # noqa: E402

RESULTS = REPO / "bench" / "results" / "smollm2_gguf.json"
EXTRA_LINES = ["数字 2024 年 12345 个", "naïve café — 東京 🚀 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ½ ² Ⅻ", "def f(x):\n    return x**2  # ²³",
               "  leading spaces and\ttabs\n\n", "x1y22z333 3.14159 1,000,000 0x1F $9.99", "Привет, мир! Ελληνικά العربية",
               "<|im_start|>user\nHi<|im_end|>", "emoji 👩‍👩‍👧 zwj, combining é vs é"]
CHAT_PROMPTS = ["What is the capital of France?", "Give me three tips for a good night's sleep.",
                "Explain photosynthesis in one paragraph.", "Write a haiku about the sea.", "What is 17 times 23?"]
CONVERT = """
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
import compress
def kb(key):
    return next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith(key + ':'))
base = kb('VmRSS')
start = time.perf_counter()
folder = compress.resolve_model('smollm2-135m')
print(json.dumps({'seconds': time.perf_counter() - start, 'peak_rss_bytes': kb('VmHWM'), 'rss_after_imports_bytes': base,
                  'folder_bytes': sum(p.stat().st_size for p in __import__('pathlib').Path(folder).iterdir())}))
"""


def fresh_conversion() -> dict:
    with tempfile.TemporaryDirectory(prefix="edgeprune-cache-") as cache:
        env = {**os.environ, "EDGEPRUNE_CACHE": cache, "PYTHONPATH": str(REPO)}
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", CONVERT, str(REPO)], capture_output=True, text=True, env=env)
        if proc.returncode:
            raise SystemExit(f"conversion failed:\n{proc.stderr[-3000:]}")
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        out["command_seconds"] = time.perf_counter() - start
        out["notes"] = [line for line in proc.stderr.splitlines() if line.startswith(("note:", "error:"))]
        return out


def cli(*args) -> str:
    proc = subprocess.run([sys.executable, "-m", "search", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode:
        raise SystemExit(f"{' '.join(args[:2])} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def pruned_plan(path: Path) -> Path:
    layers = []
    for i in range(30):
        attn, mlp = (2 / 3, 0.5) if i % 2 == 0 else (1.0, 0.8)
        attn, mlp = (0.0, mlp) if i == 5 else (attn, 0.0) if i == 12 else (0.0, 0.0) if i in (20, 29) else (attn, mlp)
        layers.append({"attn_keep": attn, "mlp_keep": mlp})
    path.write_text(json.dumps({"importance": "activation", "reconstruct": True, "layers": layers}))
    return path


def held_out_lines() -> list[str]:
    import compress
    return [line for doc in compress.texts("c4", split="heldout") for line in doc.split("\n") if line.strip()]


def check_gguf(gguf: Path, checkpoint: str) -> dict:
    import llama_cpp
    import numpy as np
    import torch
    import compress
    model, tok = compress.load_model(checkpoint, dtype="float32")
    lines = held_out_lines()
    samples = lines + EXTRA_LINES
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=512, n_threads=1, vocab_only=True, verbose=False)
    # special=True: a chat prompt's <|im_start|> is one token to both (transformers always parses special tokens)
    bad = [text for text in samples if llm.tokenize(text.encode(), add_bos=False, special=True)
           != tok(text, add_special_tokens=False)["input_ids"]]
    llm.close()
    out = {"gguf": str(gguf), "gguf_bytes": gguf.stat().st_size, "checkpoint": checkpoint,
           "params": compress.shapes_from_config(model.config).param_count(),
           "tokenization": {"lines": len(samples), "held_out_c4_lines": len(lines), "identical": len(samples) - len(bad),
                            "differing_examples": bad[:5]}}
    texts = [line for line in lines if len(tok(line)["input_ids"]) >= 128][:8]
    ids = [tok(t)["input_ids"][:128] for t in texts]
    with torch.no_grad():
        ref = [model(torch.tensor([i])).logits[0].numpy() for i in ids]
        half = model.to(torch.float16)
        fp16 = [half(torch.tensor([i])).logits[0].float().numpy() for i in ids]
        model.to(torch.float32)
    scale = max(float(np.abs(r).max()) for r in ref)
    out["logits"] = {"lines": len(ids), "tokens_per_line": 128, "max_abs_logit": scale,
                     "transformers_fp16": _diff(fp16, ref, scale)}
    for label, settings in (("llama.cpp_exact", dict(type_k=0, type_v=0, flash_attn=False)),
                            ("llama.cpp_emulated_device", dict(flash_attn=True))):
        llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=512, n_threads=1, logits_all=True, verbose=False, **settings)
        got = []
        for i in ids:
            llm.reset()
            llm.eval(i)
            got.append(np.asarray(llm.scores[:len(i)]).copy())
        llm.close()
        out["logits"][label] = _diff(got, ref, scale)
    out["greedy"] = greedy(gguf, model, tok, lines)
    return out


def _diff(got, ref, scale) -> dict:
    import numpy as np
    delta = max(float(np.abs(g - r).max()) for g, r in zip(got, ref))
    top1 = sum(int((g.argmax(-1) == r.argmax(-1)).sum()) for g, r in zip(got, ref)) / sum(len(r) for r in ref)
    return {"max_abs_diff": delta, "relative_to_max_logit": delta / scale, "top1_agreement": top1}


def greedy(gguf: Path, model, tok, lines, *, new_tokens: int = 32) -> dict:
    import llama_cpp
    import numpy as np
    import torch
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
               for q in CHAT_PROMPTS] + [" ".join(line.split()[:12]) for line in lines[::97][:5]]
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=512, n_threads=1, flash_attn=True, verbose=False)
    rows = []
    for prompt in prompts:
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        # both sides plain argmax of the raw logits, end-of-turn tokens included (generate()'s min_new_tokens
        # suppressed <|im_end|> on the transformers side only, so the two parted at the first end of turn)
        want = []
        with torch.no_grad():
            out = model(torch.tensor([ids]), use_cache=True)
            for _ in range(new_tokens):
                want.append(int(out.logits[0, -1].argmax()))
                out = model(torch.tensor([[want[-1]]]), past_key_values=out.past_key_values, use_cache=True)
        llm.reset()
        llm.eval(ids)
        got = []
        for _ in range(new_tokens):
            got.append(int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)))))
            llm.eval([got[-1]])
        same = next((k for k, (a, b) in enumerate(zip(got, want)) if a != b), len(want))
        rows.append({"prompt": prompt[-80:], "identical_tokens": same, "transformers": tok.decode(want),
                     "llama.cpp": tok.decode(got)})
    llm.close()
    return {"prompts": len(rows), "new_tokens": new_tokens,
            "identical_prompts": sum(r["identical_tokens"] == new_tokens for r in rows), "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conversions", type=int, default=3)
    ap.add_argument("--checkpoint", action="append", default=[], help="also check this pruned checkpoint folder")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    meta = run_meta()
    import compress
    runs = [fresh_conversion() for _ in range(args.conversions)]
    fp16 = compress.shapes_from_config(compress.load_config("smollm2-135m")).param_count() * 2
    conversion = {"runs": runs, "median_seconds": statistics.median(r["seconds"] for r in runs),
                  "median_peak_rss_bytes": statistics.median(r["peak_rss_bytes"] for r in runs),
                  "median_growth_bytes": statistics.median(r["peak_rss_bytes"] - r["rss_after_imports_bytes"] for r in runs),
                  "fp16_model_bytes": fp16}
    conversion["peak_over_fp16_model"] = conversion["median_peak_rss_bytes"] / fp16
    conversion["targets_met"] = conversion["median_seconds"] <= 60 and conversion["peak_over_fp16_model"] <= 3
    work = Path(tempfile.mkdtemp(prefix="edgeprune-smollm2-"))
    checks = []
    start = time.perf_counter()
    cli("export", "--model", "smollm2-135m", "--format", "gguf", "--out", str(work / "dense.gguf"))
    export_dense = time.perf_counter() - start
    checks.append({"name": "dense", "export_seconds": export_dense, **check_gguf(work / "dense.gguf", "smollm2-135m")})
    start = time.perf_counter()
    cli("prune", "--model", "smollm2-135m", "--plan", str(pruned_plan(work / "plan.json")), "--out", str(work / "pruned"))
    prune_seconds = time.perf_counter() - start
    for name, folder in [("fixed plan", work / "pruned")] + [(f"checkpoint {c}", Path(c)) for c in args.checkpoint]:
        start = time.perf_counter()
        cli("export", "--model", str(folder), "--format", "gguf", "--out", str(work / f"{len(checks)}.gguf"))
        row = {"name": name, "export_seconds": time.perf_counter() - start,
               **check_gguf(work / f"{len(checks)}.gguf", str(folder))}
        if name == "fixed plan":
            row["prune_seconds"] = prune_seconds
        checks.append(row)
    summary = {"tokenization_identical_everywhere": all(c["tokenization"]["identical"] == c["tokenization"]["lines"]
                                                         for c in checks),
               "greedy_identical_everywhere": all(c["greedy"]["identical_prompts"] == c["greedy"]["prompts"]
                                                  for c in checks)}
    out = {**meta, "load_average_at_end": list(os.getloadavg()), "conversion": conversion, "exports": checks,
           "summary": summary}
    from compress._atomic import write_json
    write_json(Path(args.out), out)
    print(json.dumps({"conversion_median_s": conversion["median_seconds"],
                      "peak_over_fp16": conversion["peak_over_fp16_model"], **summary,
                      "greedy": {c["name"]: c["greedy"]["identical_prompts"] for c in checks},
                      "logits_rel": {c["name"]: c["logits"]["llama.cpp_exact"]["relative_to_max_logit"] for c in checks}},
                     indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
