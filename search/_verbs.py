"""The verbs behind `python -m search`. Heavy imports happen inside each verb, so `--help` is fast."""
from __future__ import annotations

import json
import sys


def _print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")


# ---- prune ---------------------------------------------------------------------------------------
def add_prune_args(p):
    p.add_argument("--model", default="stories260k", help="registry name, HF id or local directory")
    p.add_argument("--plan", required=True, help="pruning plan JSON (see README: Pruning plans)")
    p.add_argument("--out", required=True, help="output directory (a complete HF model directory)")
    p.add_argument("--force", action="store_true", help="replace a non-empty output directory")
    p.add_argument("--dtype", default="float16", help="saved weight dtype: float16 (default) or float32")


def prune(args) -> int:
    import compress
    plan = compress.Plan.load(args.plan)                 # bad plans fail before anything is loaded
    dtype = compress.check_dtype(args.dtype)
    compress.check_output_dir(args.out, force=args.force)
    plan.check_fits(compress.shapes_from_config(compress.load_config(args.model)))
    # Load in the saved dtype: slicing is exact in any dtype, and FP16 halves peak memory on 7B models.
    model, tokenizer = compress.load_model(args.model, dtype=dtype)
    result = compress.prune(model, tokenizer, plan, release_old=True)  # we own the model
    summary = result.summary()
    compress.save_pruned(model, tokenizer, args.out, plan=plan, summary=summary, force=args.force, dtype=dtype)
    summary["bytes"] = result.params * (2 if dtype.itemsize == 2 else 4)
    _print_json({"out": str(args.out), **summary})
    return 0


# ---- verbs filled in by later modules ------------------------------------------------------------
def _not_yet(name):
    def add(p):
        p.add_argument("rest", nargs="*")

    def run(args):
        raise ValueError(f"`{name}` is not available in this build")
    return add, run


add_launch_args, launch = _not_yet("launch")
add_resume_args, resume = _not_yet("resume")
add_top_args, top = _not_yet("top")
add_evaluate_args, evaluate = _not_yet("evaluate")
add_distill_args, distill = _not_yet("distill")
