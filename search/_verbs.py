"""The verbs behind `python -m search`. Heavy imports happen inside each verb, so `--help` is fast."""
from __future__ import annotations

import argparse
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


# ---- launch / resume / top ------------------------------------------------------------------------
DEFAULT_ROOT = "runs"


def _add_common(p):
    p.add_argument("--root", default=DEFAULT_ROOT, help="folder holding experiments and the MLflow store (default: runs)")
    p.add_argument("--address", default=None, help="join an existing Ray cluster (default: start a local one)")


def add_launch_args(p):
    p.add_argument("--model", default=None, help="registry name, HF id or local dir (default: stories260k)")
    p.add_argument("--config", default=None, help="experiment YAML (default: experiments/<model>.yaml)")
    p.add_argument("--experiment", default=None, help="experiment name (default: the model name)")
    p.add_argument("--trials", type=int, default=None)
    p.add_argument("--budget-gb", type=float, default=None, help="memory budget in GiB (default: the device's)")
    p.add_argument("--device", default=None, help="device profile, e.g. phone-12gb")
    p.add_argument("--runtime", default=None, choices=["llama.cpp", "mlc"])
    p.add_argument("--sampler", default=None, choices=["tpe", "nsga2", "gp", "random"])
    p.add_argument("--mode", default=None, choices=["single", "multi"], help="multi: proxy score vs --versus")
    p.add_argument("--versus", default=None, choices=["memory", "tokens_per_s"], help="second objective in multi mode")
    p.add_argument("--workers", type=int, default=None, help="concurrent trials")
    p.add_argument("--rungs", type=int, default=None, help="fidelity levels (ASHA rungs)")
    p.add_argument("--distill", action=argparse.BooleanOptionalAction, default=None, help="distillation in trials")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite:///<root>/mlflow.db)")
    p.add_argument("--full-eval-top", type=int, default=0, metavar="K",
                   help="after the search, run OpenCompass on the top K candidates and report the proxy-vs-full "
                        "Spearman correlation")
    p.add_argument("--full-eval-limit", type=int, default=None, metavar="N",
                   help="items per dataset for --full-eval-top (default: all; a full CPU run takes hours)")
    _add_common(p)


def launch(args) -> int:
    import experiments
    import objectives
    from pathlib import Path
    overrides = {"budget_gb": args.budget_gb, "device": args.device, "runtime": args.runtime,
                 "search.trials": args.trials, "search.sampler": args.sampler, "search.mode": args.mode,
                 "search.multi_objective": args.versus, "search.workers": args.workers,
                 "proxy.rungs": args.rungs, "distill.enabled": args.distill}
    exp = experiments.load_experiment(model=args.model, config=args.config, overrides=overrides)
    objectives.get_profile(exp.device)                      # unknown profile: fail before any work
    import compress
    compress.load_config(exp.model)                         # unknown / uncached model: same
    from search import _driver
    name = args.experiment or _free_name(Path(args.root), exp.model.replace("/", "_"))
    if args.full_eval_top < 0:
        raise ValueError("--full-eval-top must be >= 0")
    exp.search.top_k = max(exp.search.top_k, args.full_eval_top)  # full evaluation needs the checkpoints
    status = _driver.launch(exp, name=name, root=Path(args.root), tracking_uri=args.tracking_uri, address=args.address)
    if status == 0 and args.full_eval_top:
        from objectives._oc_report import full_eval_top
        full_eval_top(Path(args.root) / name, args.full_eval_top, limit=args.full_eval_limit)
    return status


def _free_name(root, base: str) -> str:
    """Without --experiment, a second launch gets base-2, base-3, ...: an earlier search is never touched."""
    name, n = base, 1
    while (root / name).exists() and any((root / name).iterdir()):
        n += 1
        name = f"{base}-{n}"
    return name


def add_resume_args(p):
    p.add_argument("--experiment", required=True)
    _add_common(p)


def resume(args) -> int:
    from pathlib import Path
    from search import _driver
    return _driver.resume(name=args.experiment, root=Path(args.root), address=args.address)


def add_top_args(p):
    p.add_argument("--experiment", required=True)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--root", default=DEFAULT_ROOT)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def top(args) -> int:
    from pathlib import Path
    from search._paths import ExperimentDir
    from search._report import feasible_complete, human_bytes
    paths = ExperimentDir.open(Path(args.root), args.experiment)
    if not paths.results.is_file():
        raise ValueError(f"experiment {args.experiment} has no results yet; finish it with `python -m search resume "
                         f"--experiment {args.experiment}`")
    data = json.loads(paths.results.read_text())
    ranked = sorted(feasible_complete(data["trials"]), key=lambda r: -r["score"])[: args.k]
    saved = {t["trial_id"]: t["dir"] for t in data["summary"].get("top", [])}
    if args.json:
        _print_json([{**r, "params": json.loads(r.pop("params_json")), "checkpoint": saved.get(r["trial_id"])}
                     for r in ranked])
        return 0
    print(f"{'rank':<5}{'name':<22}{'score':>9}{'accuracy':>10}{'KL':>9}{'memory':>12}  plan / checkpoint")
    for i, r in enumerate(ranked, 1):
        print(f"{i:<5}{r['name']:<22}{r['score']:9.4f}{r.get('proxy_accuracy') or 0:10.4f}"
              f"{r.get('kl_to_teacher') or 0:9.4f}{human_bytes(r.get('peak_memory_bytes')):>12}  "
              f"{saved.get(r['trial_id'], '(not materialised)')}")
    return 0


# ---- distill ------------------------------------------------------------------------------------
def add_distill_args(p):
    p.add_argument("--student", required=True, help="pruned checkpoint directory (from `prune` or a search)")
    p.add_argument("--teacher", default="stories260k", help="dense model: registry name, HF id or directory")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--out", required=True)
    p.add_argument("--force", action="store_true", help="replace a non-empty output directory")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--zero-stage", type=int, default=None, choices=[0, 1, 2, 3])
    p.add_argument("--precision", default=None, choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--kd-weight", type=float, default=None, help="KD vs LM loss mix (1 = KD only)")
    p.add_argument("--hidden-weight", type=float, default=None, help="hidden-state matching weight")
    p.add_argument("--temperature", type=float, default=None)


def distill(args) -> int:
    import compress
    overrides = {k: v for k, v in {"lr": args.lr, "zero_stage": args.zero_stage, "precision": args.precision,
                                   "kd_weight": args.kd_weight, "hidden_weight": args.hidden_weight,
                                   "temperature": args.temperature}.items() if v is not None}

    def progress(step, metrics):
        print(f"step {step}: loss {metrics['loss']:.4f} held-out KL {metrics['heldout_kl']:.4f} "
              f"ppl {metrics['heldout_ppl']:.2f}", flush=True)
        return False
    result = compress.run_distill(args.student, args.teacher, args.steps, args.out, force=args.force,
                                  on_report=progress, **overrides)
    _print_json(result)
    return 0


# ---- evaluate -----------------------------------------------------------------------------------
def add_evaluate_args(p):
    p.add_argument("--model", default="stories260k", help="the candidate: registry name, HF id or directory")
    p.add_argument("--teacher", default=None, help="dense model for KL / perplexity ratio (default: none)")
    p.add_argument("--device", default=None, help="device profile (default: phone-12gb, or stories260k-tiny "
                                                  "for the bundled model)")
    p.add_argument("--tasks", nargs="+", default=None, help="proxy tasks (default: all six)")
    p.add_argument("--fidelity", type=int, default=0, help="proxy fidelity level (0 = cheapest)")
    p.add_argument("--data-dir", default=None, help="OpenCompass-style data directory for the proxy tasks")
    p.add_argument("--proxy-mode", default="loglik", choices=["loglik", "faithful"],
                   help="loglik: cheap (option log-likelihoods, short generations); faithful: every task exactly as "
                        "the competition's OpenCompass configs score it (generation, slower)")
    p.add_argument("--proxy-items", nargs="+", default=None, metavar="TASK=N",
                   help="score the first N items of these tasks instead of the fidelity level's, e.g. gsm8k=40")
    p.add_argument("--max-out-len", type=int, default=None,
                   help="faithful mode: cap on generated tokens per item (default: each config's own / 1024)")
    p.add_argument("--json", action="store_true", help="one JSON object: every metric with unit and direction")


def _task_counts(pairs) -> dict | None:
    """['gsm8k=40', 'bbh=54'] -> {'gsm8k': 40, 'bbh': 54}."""
    if not pairs:
        return None
    out = {}
    for pair in pairs:
        name, _, count = pair.partition("=")
        if not name or not count.isdigit():
            raise ValueError(f"--proxy-items takes TASK=N pairs, got {pair!r}")
        out[name] = int(count)
    return out


def evaluate(args) -> int:
    import compress
    import objectives
    profile = objectives.get_profile(args.device or ("stories260k-tiny" if args.model == "stories260k" else "phone-12gb"))
    proxy_kwargs = {"data_dir": args.data_dir} if args.data_dir else {}
    if args.tasks:
        proxy_kwargs["tasks"] = tuple(args.tasks)
    proxy_kwargs.update(mode=args.proxy_mode, items=_task_counts(args.proxy_items), max_out_len=args.max_out_len)
    if args.max_out_len is not None and args.proxy_mode != "faithful":
        raise ValueError("--max-out-len applies to --proxy-mode faithful only")
    judges = ["memory", "throughput", objectives.ProxyAccuracyObjective(**proxy_kwargs)]
    model, tokenizer = compress.load_model(args.model, dtype="float32")
    context = objectives.EvalContext(profile=profile, data_dir=args.data_dir)
    if args.teacher:
        teacher, teacher_tok = compress.load_model(args.teacher, dtype="float32")
        if teacher.config.vocab_size != model.config.vocab_size:
            raise ValueError(f"teacher vocabulary ({teacher.config.vocab_size} tokens) differs from the candidate's "
                             f"({model.config.vocab_size}): KL to the teacher needs the same tokenizer")
        cache = objectives.TeacherCache.build(teacher, teacher_tok or tokenizer)
        cache.check_student(model, tokenizer)
        context.teacher_cache = cache
        judges.append("fidelity")
    candidate = objectives.Candidate(shapes=compress.shapes_from_config(model.config), model=model,
                                     tokenizer=tokenizer, path=str(args.model))
    values = objectives.evaluate_all(candidate, context, objectives=judges, fidelity=args.fidelity)
    described = objectives.describe(judges)
    metrics = {name: {"value": value, **described.get(name, {"unit": "score", "higher_is_better": True})}
               for name, value in values.items()}
    if args.json:
        _print_json({"model": str(args.model), "teacher": args.teacher, "device": profile.name,
                     "fidelity": args.fidelity, "proxy_mode": args.proxy_mode, "metrics": metrics})
        return 0
    for name, m in metrics.items():
        arrow = "higher better" if m["higher_is_better"] else "lower better"
        print(f"{name:<26}{m['value']:>18.6g}  {m['unit']:<12}{arrow}")
    return 0
