"""bench/gpu_trial.py runs wherever the GPU checks are made; CI has no GPU, so its tiny mode runs every
stage here on the CPU (build, prepare, load + prune per criterion, objectives, a whole trial, distillation
steps, save): a broken stage fails here, not on the day a GPU is lent."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_stage_of_the_gpu_trial_benchmark_runs_in_tiny_mode(tmp_path):
    # gsm8k: the faithful rung generates up to 512 tokens per item where CSQA's CoT config allows 1024, and a
    # random-weight model never stops early (half the time of this test, every stage still run)
    out = tmp_path / "gpu_trial.json"
    proc = subprocess.run([sys.executable, "bench/gpu_trial.py", "--shape", "tiny", "--levels", "1", "--tasks", "gsm8k",
                           "--out", str(out), "--work", str(tmp_path / "work")], cwd=REPO, capture_output=True,
                          text=True, timeout=1800, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    stages = {s["stage"]: s for s in record["stages"]}
    assert not [s for s in stages.values() if "error" in s], [s for s in stages.values() if "error" in s]
    assert record["stopped_before"] is None
    names = " | ".join(stages)
    for part in ("build", "prepare", "prune [taylor]", "proxy accuracy, rung 0", "KL + perplexity, rung 0",
                 "whole level-0 trial", "distill 3 BF16 steps", "save the top-k"):
        assert part in names, (part, names)
    distill = next(s for s in stages.values() if s["stage"].startswith("distill"))
    assert distill["final"]["step"] == 3 and distill["student_params"] < stages["build + save dense FP16 checkpoint"]["params"]
