"""Benchmark: the whole product on SmolLM2-135M, verb by verb, as a user runs it (issue 22).

    .venv/bin/python bench/smollm2_pipeline.py --root DIR --experiment NAME [--distill-steps 20] [--max-out-len 128]

On a finished search of experiments/smollm2-135m.yaml (e.g. the one bench/sim_vs_measured.py --model smollm2-135m
--root DIR keeps): `top`, `distill` of the best candidate (teacher smollm2-135m), `full-eval --top 3 --limit 4
--max-out-len 128` (a cap: at 256 tokens one candidate's 33 datasets took ~25 min of CPU generation here, at the
configs' own 512-1024 hours) and `submit --top 3`, each as a separate command; records each one's exit
status, wall time and the figures it reports (distillation's held-out KL before / after, the OpenCompass scores
with their item counts, the bundle's checks). Writes bench/results/smollm2_pipeline.json (date, machine, commit,
command, load average).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench._provenance import run_meta  # noqa: E402

RESULTS = REPO / "bench" / "results" / "smollm2_pipeline.json"


def verb(*args) -> dict:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "search", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    return {"command": "python -m search " + " ".join(args), "exit_status": proc.returncode,
            "seconds": round(time.perf_counter() - start, 1), "stdout": proc.stdout, "stderr_tail": proc.stderr[-1500:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--experiment", required=True)
    ap.add_argument("--distill-steps", type=int, default=20)
    ap.add_argument("--max-out-len", type=int, default=128)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    meta = run_meta()
    root, name = Path(args.root), args.experiment
    steps = {}
    steps["top"] = verb("top", "--experiment", name, "--k", "3", "--json", "--root", str(root))
    top = json.loads(steps["top"].pop("stdout")) if steps["top"]["exit_status"] == 0 else []
    steps["top"]["candidates"] = [{k: c.get(k) for k in ("name", "score", "kl_to_teacher", "checkpoint")} for c in top]
    best = next((c for c in top if c.get("checkpoint")), None)
    if best:
        out = root / "distilled"
        steps["distill"] = verb("distill", "--student", best["checkpoint"], "--teacher", "smollm2-135m", "--steps",
                                str(args.distill_steps), "--out", str(out), "--force")
        lines = steps["distill"]["stdout"].strip().splitlines()
        start = next((i for i, line in enumerate(lines) if line.startswith("{")), None)
        steps["distill"]["result"] = json.loads("\n".join(lines[start:])) if start is not None else None
    steps["full-eval"] = verb("full-eval", "--experiment", name, "--top", "3", "--limit", "4", "--max-out-len",
                              str(args.max_out_len), "--root", str(root))
    report = root / name / "opencompass.json"
    if report.is_file():
        data = json.loads(report.read_text())
        steps["full-eval"]["candidates"] = [{k: c.get(k) for k in ("rank", "name", "scores", "items", "error")}
                                            for c in data.get("candidates", [])]
        steps["full-eval"]["spearman"] = {k: v for k, v in data.items() if "spearman" in k}
    bundle = root / "submission"
    steps["submit"] = verb("submit", "--experiment", name, "--top", "3", "--out", str(bundle), "--root", str(root))
    if (bundle / "check.json").is_file():
        steps["submit"]["check"] = json.loads((bundle / "check.json").read_text())
    for s in steps.values():
        s["stdout_tail"] = s.pop("stdout", "")[-2500:]
    out = {**meta, "load_average_at_end": list(os.getloadavg()), "root": str(root), "experiment": name,
           "steps": steps, "all_succeeded": all(s["exit_status"] == 0 for s in steps.values())}
    from compress._atomic import write_json
    write_json(Path(args.out), out)
    for key, s in steps.items():
        print(f"{key}: exit {s['exit_status']}, {s['seconds']} s")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
