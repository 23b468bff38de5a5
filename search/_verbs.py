"""The verbs behind `python -m search`. Heavy imports happen inside each verb, so `--help` is fast."""
from __future__ import annotations

import argparse
import json
import sys


def _check_data_dir(data_dir: str, tasks, fidelity: int) -> None:
    """Read every task's items from a user's data directory before any model is loaded."""
    from objectives import get_task
    for name in tasks:
        try:
            get_task(name).items(data_dir, level=fidelity)
        except (OSError, KeyError, IndexError, TypeError, UnicodeDecodeError, json.JSONDecodeError) as err:
            detail = f"{type(err).__name__}: {err}" if not isinstance(err, OSError) else (err.strerror or str(err))
            raise ValueError(f"data directory {data_dir}: cannot read the {name} items ({detail})") from None


def _print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")


# ---- prune ---------------------------------------------------------------------------------------
def add_prune_args(p):
    p.add_argument("--model", default="stories260k", help="registry name, HF id, local directory or .gguf file")
    p.add_argument("--plan", required=True, help="pruning plan JSON (see README: Pruning plans)")
    p.add_argument("--out", required=True, help="output directory (a complete HF model directory)")
    p.add_argument("--force", action="store_true", help="replace a non-empty output directory")
    p.add_argument("--dtype", default="float16", help="saved weight dtype: float16 (default) or float32")


def prune(args) -> int:
    import compress
    plan = compress.Plan.load(args.plan)                 # bad plans fail before anything is loaded
    dtype = compress.check_dtype(args.dtype)
    compress.check_parent(args.out)
    compress.check_apart(args.out, [compress.resolve_model(args.model), args.plan])   # never replace an input
    compress.check_output_dir(args.out, force=args.force)
    plan.check_fits(compress.shapes_from_config(compress.load_config(args.model)))
    # Load in the saved dtype: slicing is exact in any dtype, and FP16 halves peak memory on 7B models. A plan
    # that reads calibration data (activation / taylor criteria, reconstruction) runs forward passes first, and
    # 16-bit matmuls on a CPU are many times slower than FP32 (minutes instead of seconds for a 135M model).
    import torch
    needs_data = bool(compress.get_criterion(plan.importance).requires) or plan.reconstruct
    compute = torch.float32 if needs_data and compress.accelerator().type == "cpu" else dtype
    model, tokenizer = compress.load_model(args.model, dtype=compute)
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
    p.add_argument("--track", default="prune", choices=["prune", "scratch"],
                   help="prune: compress a pre-trained model (track 1, default); scratch: search and train an "
                        "architecture from scratch on C4 + Alpaca-zh (track 2)")
    p.add_argument("--model", default=None, help="registry name, HF id, local dir or .gguf file (default: stories260k)")
    p.add_argument("--config", default=None, help="experiment YAML (default: experiments/<model>.yaml)")
    p.add_argument("--experiment", default=None, help="experiment name (default: the model name)")
    p.add_argument("--trials", type=int, default=None)
    p.add_argument("--budget-gb", type=float, default=None, help="memory budget in GiB (default: the device's)")
    p.add_argument("--device", default=None, help="device profile, e.g. phone-12gb")
    p.add_argument("--runtime", default=None, choices=["llama.cpp", "mlc"])
    p.add_argument("--sampler", default=None, choices=list(_samplers()),
                   help="evolution: EvoPress-style; cmaes: CMA-ES over the shares (see README)")
    p.add_argument("--mode", default=None, choices=["single", "multi"], help="multi: proxy score vs --versus")
    p.add_argument("--versus", default=None, choices=["memory", "tokens_per_s"], help="second objective in multi mode")
    p.add_argument("--workers", type=int, default=None, help="concurrent trials")
    p.add_argument("--rungs", type=int, default=None, help="use the last N rungs of the fidelity ladder (ASHA rungs)")
    p.add_argument("--min-tokens-per-s", type=float, default=None, metavar="TPS",
                   help="decode throughput floor on the device profile: a constraint the sampler sees")
    p.add_argument("--distill", action=argparse.BooleanOptionalAction, default=None, help="distillation in trials")
    scratch = p.add_argument_group("track 2 (--track scratch)")
    scratch.add_argument("--size-gb", type=float, default=None, help="peak inference memory budget in GiB the "
                         "architecture must fit (same as --budget-gb; default: the device's)")
    scratch.add_argument("--tokens", type=int, default=None, help="training tokens per trial (default: the experiment's)")
    scratch.add_argument("--datasets", nargs="+", default=None, help="training data: c4 and/or alpaca_zh (nothing else "
                         "is allowed)")
    scratch.add_argument("--dtype", default=None, help="saved weights: float16 (default) or float32")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking server (default: launch starts one for the experiment, its store in "
                        "<root>/NAME/mlflow.db)")
    p.add_argument("--storage", default=None, metavar="PATH_OR_URI",
                   help="the experiment's storage: Tune state, trial checkpoints, top candidates (default: the run "
                        "directory). A multi-node cluster needs a shared filesystem path or a URI such as s3://bucket/dir")
    p.add_argument("--max-failures", type=int, default=None,
                   help="retries of a trial whose worker or node died (default: search.max_failures, 3)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                   help="override any experiment setting (VALUE is YAML), e.g. --set distill.seq_len=256 "
                        "--set resources.gpus_per_trial=0; repeatable, applied after the other flags")
    p.add_argument("--full-eval-top", type=int, default=0, metavar="K",
                   help="after the search, run OpenCompass on the top K candidates and report the proxy-vs-full "
                        "Spearman correlation")
    p.add_argument("--full-eval-limit", type=int, default=None, metavar="N",
                   help="items per dataset for --full-eval-top (default: all; a full CPU run takes hours)")
    p.add_argument("--full-eval-data-root", default=None, metavar="DIR",
                   help="the OpenCompass data for --full-eval-top, as `full-eval --data-root` (default: the "
                        "shipped subsets, which serve --full-eval-limit up to their size)")
    _add_unsafe_exec(p)
    _add_common(p)


def _samplers():
    from experiments._config import SAMPLERS
    return SAMPLERS


def _add_unsafe_exec(p):
    p.add_argument("--unsafe-exec", action="store_true",
                   help="run model-written HumanEval programs even where they cannot be sandboxed (bubblewrap "
                        "missing): they then run with resource limits only")


def _settings(items: list[str]) -> dict:
    """--set KEY=VALUE pairs -> {dotted key: YAML value}; the experiment schema rejects unknown keys."""
    import yaml
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set takes KEY=VALUE (e.g. distill.seq_len=256), got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ValueError(f"--set {key}: value {value!r} is not valid YAML ({type(err).__name__})") from None
    return out


def launch(args) -> int:
    import experiments
    from pathlib import Path
    from search._record import ExperimentRecord
    from search._storage import Storage
    if args.full_eval_top < 0:
        raise ValueError("--full-eval-top must be >= 0")
    if args.full_eval_limit is not None and args.full_eval_limit < 1:
        raise ValueError("--full-eval-limit must be >= 1")
    if args.tracking_uri is not None:
        from search._tracking import check_uri
        check_uri(args.tracking_uri)                   # its form; whether it answers is checked later
    if args.full_eval_top:          # the OpenCompass data must be there before the search, not hours after it
        from objectives._oc_report import check_data
        try:
            check_data(limit=args.full_eval_limit, data_root=args.full_eval_data_root)
        except ValueError as err:   # its advice names full-eval's flags; launch spells them --full-eval-*
            raise ValueError(f"--full-eval-top: {err} (launch: --full-eval-limit N, --full-eval-data-root DIR)") from None
    from search import _verbs_scratch
    if _verbs_scratch.is_scratch(args):
        return _verbs_scratch.launch_scratch(args)
    overrides = {"budget_gb": args.budget_gb, "device": args.device, "runtime": args.runtime,
                 "search.trials": args.trials, "search.sampler": args.sampler, "search.mode": args.mode,
                 "search.multi_objective": args.versus, "search.workers": args.workers,
                 "proxy.rungs": args.rungs, "distill.enabled": args.distill, "search.max_failures": args.max_failures,
                 "search.min_tokens_per_s": args.min_tokens_per_s,
                 "proxy.unsafe_exec": True if args.unsafe_exec else None, **_settings(args.settings)}
    exp = experiments.load_experiment(model=args.model, config=args.config, overrides=overrides,
                                      model_params=_param_count)
    if args.full_eval_top > exp.search.trials:
        raise ValueError(f"--full-eval-top {args.full_eval_top}: the search has {exp.search.trials} trials")
    root = Path(args.root)
    name = args.experiment if args.experiment is not None else _free_name(root, _default_name(exp.model))
    storage = Storage.check(args.storage) if args.storage else None     # an unknown filesystem: one line
    record = ExperimentRecord.check_new(root, name, storage=storage)    # an existing experiment is refused
    import compress
    compress.check_apart(record.path, [compress.resolve_model(exp.model)], flag="the run directory")
    if storage is not None and storage.local_path is not None:
        compress.check_apart(storage.child(name).local_path, [compress.resolve_model(exp.model)], flag="--storage")
    _preflight(exp, record)
    return launch_checked(exp, record, args, storage=storage,
                          note=exp.origin if exp.origin.startswith("generic") else None)


def launch_checked(exp, record, args, *, storage, note: str | None = None) -> int:
    """Both tracks, once their own checks passed: the MLflow server answers, then the search, its exit
    status, and the full evaluation of its top candidates when asked for."""
    if args.tracking_uri:
        from search._tracking import check_reachable
        check_reachable(args.tracking_uri)                              # a refusing MLflow server: one line
    if note:
        print(f"note: {note}", flush=True)
    exp.search.top_k = max(exp.search.top_k, args.full_eval_top)  # full evaluation needs the checkpoints
    from search import _driver
    status = _driver.launch(exp, record, storage=storage, tracking_uri=args.tracking_uri, address=args.address)
    status = _search_status(record, status)
    if status == 0 and args.full_eval_top:
        from objectives._oc_report import full_eval_top
        full_eval_top(record, args.full_eval_top, limit=args.full_eval_limit, data_root=args.full_eval_data_root)
    return status


def _param_count(model: str) -> int:
    import compress
    return compress.shapes_from_config(compress.load_config(model)).param_count()


def _preflight(exp, record) -> None:
    """Everything a search can be refused for, checked before anything is written: the model, device,
    criteria, tasks, the sandbox HumanEval needs, host memory for reconstruction's Gram matrices, and a budget
    the smallest plan of the space fits."""
    import compress
    import objectives
    import spaces
    from search import _driver
    from search._report import human_bytes
    objectives.get_profile(exp.device)
    compress.check_checkpoint(exp.model)      # unknown / uncached / quantized / corrupt / shapes its config denies
    compress.load_tokenizer_of(exp.model)     # a tokenizer that does not parse, before Ray starts
    for name in exp.space.criteria:
        compress.CRITERIA.get(name)
    objectives.ProxyWeights.from_dict(exp.proxy.weights)
    objectives.ProxyAccuracyObjective(tasks=tuple(exp.proxy.tasks), unsafe_exec=exp.proxy.unsafe_exec)
    setup = _driver.build_setup(exp, record)
    if setup.spec.reconstruct:                 # the driver collects them and keeps them in host memory
        compress.check_gram_memory(setup.base_shapes)
    target = spaces.memory_target(setup.budget_bytes, setup.spec.min_budget_use if setup.spec.multi else 1.0,
                                  setup.profile().runtime_overhead_bytes)
    need = min(setup.memory_of()(plan) for plan in spaces.smallest_plans(setup.spec, exp.space.criteria[0]))
    if need > target:
        raise ValueError(f"the memory budget ({human_bytes(target)}) is below the smallest plan this search can "
                         f"produce ({human_bytes(need)}: embeddings, one sub-block at min_keep and the runtime's "
                         "fixed overhead); raise --budget-gb")


def _search_status(record, status: int) -> int:
    """Non-zero when the search ran but every trial failed (their reasons are in the summary above)."""
    if status != 0 or not record.results.is_file():
        return status
    summary = record.read_results()["summary"]
    failed = summary.get("failed") or []
    if summary.get("trials") and len(failed) == summary["trials"]:
        print(f"error: every trial failed ({len(failed)}); first: {failed[0].get('reason')}", file=sys.stderr)
        return 1
    return status


def _default_name(model: str) -> str:
    """The experiment name a model gets without --experiment: a registry name, org_name for a hub id,
    the folder's name for a local directory, the file's stem for a .gguf file (a valid experiment name in every case)."""
    import re
    from pathlib import Path
    path = Path(model).expanduser()
    base = path.name if path.is_dir() else path.stem if path.suffix.lower() == ".gguf" else model.replace("/", "_")
    return re.sub(r"[^A-Za-z0-9._-]", "-", base).lstrip("._-")[:100] or "experiment"


def _free_name(root, base: str) -> str:
    """Without --experiment, a second launch gets base-2, base-3, ...: an earlier search is never touched."""
    from search._record import ExperimentRecord
    return ExperimentRecord.free_name(root, base)


def add_resume_args(p):
    p.add_argument("--experiment", required=True)
    _add_common(p)


def resume(args) -> int:
    import objectives
    from search._integrity import check_resumable
    from search._record import ExperimentRecord
    record = ExperimentRecord.open(args.root, args.experiment)    # no such experiment: one line
    check_resumable(record)        # finished, damaged, records that disagree, a copy sharing storage: one line
    exp = record.experiment()
    objectives.ProxyAccuracyObjective(tasks=tuple(exp.proxy.tasks), unsafe_exec=exp.proxy.unsafe_exec)
    state = record.read_state()
    if state.get("tracking_uri") and not state.get("tracking_managed"):
        from search._tracking import check_reachable
        check_reachable(state["tracking_uri"])
    from search import _driver
    return _search_status(record, _driver.resume(record, address=args.address))


def add_top_args(p):
    p.add_argument("--experiment", required=True)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--root", default=DEFAULT_ROOT)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def top(args) -> int:
    """The best candidates; memory and decode speed labelled by kind (simulated; measured-emulated /
    measured-phone next to it once `validate` ran the candidate)."""
    from objectives import SIMULATED, preferred
    from search._record import ExperimentRecord
    from search._report import feasible_complete, human_bytes
    if args.k < 1:
        raise ValueError(f"--k must be >= 1, got {args.k}")
    record = ExperimentRecord.open(args.root, args.experiment)
    data = record.read_results()
    ranked = sorted(feasible_complete(data["trials"]), key=lambda r: -r["score"])[: args.k]
    saved = {t["trial_id"]: t["dir"] for t in data["summary"].get("top", [])}
    numbers = {r["trial_id"]: record.numbers(r) for r in ranked}
    if args.json:
        _print_json([{**r, "params": json.loads(r.pop("params_json")), "checkpoint": saved.get(r["trial_id"]),
                      "numbers": numbers[r["trial_id"]]} for r in ranked])
        return 0
    print(f"{'rank':<5}{'name':<22}{'score':>9}{'accuracy':>10}{'KL':>9}{'memory':>12}{'decode tok/s':>14}  "
          f"{'(kind)':<19}{'sim. memory':>12}{'sim. tok/s':>12}  checkpoint")
    for i, r in enumerate(ranked, 1):
        n = numbers[r["trial_id"]]
        memory, kind = preferred(n, "peak_memory_bytes")
        decode, _ = preferred(n, "decode_tokens_per_s")
        sim = n[SIMULATED]
        print(f"{i:<5}{r['name']:<22}{r['score']:9.4f}{r.get('proxy_accuracy') or 0:10.4f}"
              f"{r.get('kl_to_teacher') or 0:9.4f}{human_bytes(memory):>12}{_rate(decode):>14}  {kind or '-':<19}"
              f"{human_bytes(sim.get('peak_memory_bytes')):>12}{_rate(sim.get('decode_tokens_per_s')):>12}  "
              f"{saved.get(r['trial_id'], '(not materialised)')}")
    return 0


def _rate(value) -> str:
    return "-" if value is None else f"{value:,.0f}"


# ---- distill ------------------------------------------------------------------------------------
def add_distill_args(p):
    p.add_argument("--student", required=True, help="pruned checkpoint directory (from `prune` or a search)")
    p.add_argument("--teacher", default="stories260k", help="dense model: registry name, HF id, directory or .gguf file")
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
    compress.check_parent(args.out)
    compress.check_apart(args.out, [args.student, compress.resolve_model(args.teacher)])   # never over an input
    result = compress.run_distill(args.student, args.teacher, args.steps, args.out, force=args.force,
                                  on_report=progress, **overrides)
    _print_json(result)
    return 0


# ---- evaluate -----------------------------------------------------------------------------------
MAX_OUT_LEN = 32768          # generated tokens per item: the competition's configs use 512-1024
def add_evaluate_args(p):
    p.add_argument("--model", default="stories260k", help="the candidate: registry name, HF id, directory or .gguf file")
    p.add_argument("--teacher", default=None, help="dense model for KL / perplexity ratio (default: none)")
    p.add_argument("--device", default=None, help="device profile (default: the one of the model's own "
                                                  "experiments/<model>.yaml, e.g. stories260k-tiny, else phone-12gb)")
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
    _add_unsafe_exec(p)


def _task_counts(pairs) -> dict | None:
    """['gsm8k=40', 'bbh=54'] -> {'gsm8k': 40, 'bbh': 54}."""
    if not pairs:
        return None
    out = {}
    for pair in pairs:
        name, _, count = pair.partition("=")
        if not name or not count.isdigit() or int(count) < 1:
            raise ValueError(f"--proxy-items takes TASK=N pairs with N >= 1, got {pair!r}")
        out[name] = int(count)
    return out


def _default_device(model: str) -> str:
    """The device of the model's own experiment YAML (stories260k -> stories260k-tiny, ...), else phone-12gb."""
    import experiments
    import yaml
    path = experiments.config_path_for(model) if not model.endswith((".yaml", ".yml")) else None
    device = (yaml.safe_load(path.read_text()) or {}).get("device") if path else None
    return device if isinstance(device, str) else "phone-12gb"


def evaluate(args) -> int:
    import compress
    import objectives
    profile = objectives.get_profile(args.device or _default_device(args.model))
    proxy_kwargs = {"data_dir": args.data_dir} if args.data_dir else {}
    if args.tasks:
        proxy_kwargs["tasks"] = tuple(args.tasks)
    proxy_kwargs.update(mode=args.proxy_mode, items=_task_counts(args.proxy_items), max_out_len=args.max_out_len)
    if args.max_out_len is not None and args.proxy_mode != "faithful":
        raise ValueError("--max-out-len applies to --proxy-mode faithful only")
    if args.max_out_len is not None:
        compress.number(args.max_out_len, "--max-out-len", integer=True, low=1, high=MAX_OUT_LEN)
    proxy = objectives.ProxyAccuracyObjective(unsafe_exec=args.unsafe_exec, **proxy_kwargs)
    if not 0 <= args.fidelity <= proxy.max_fidelity:
        raise ValueError(f"--fidelity must be 0..{proxy.max_fidelity}, got {args.fidelity}")
    if args.data_dir:
        _check_data_dir(args.data_dir, proxy.tasks, args.fidelity)
    for name in proxy.tasks:              # --proxy-items against the items there are, before the model loads
        proxy.items_for(name, args.data_dir, args.fidelity)
    vocab = compress.load_config(args.model).vocab_size
    if args.teacher and compress.load_config(args.teacher).vocab_size != vocab:
        raise ValueError(f"teacher vocabulary ({compress.load_config(args.teacher).vocab_size} tokens) differs from "
                         f"the candidate's ({vocab}): KL to the teacher needs the same tokenizer")
    judges = ["memory", "throughput", proxy]
    model, tokenizer = compress.load_on_device(args.model)          # FP16 on a GPU, FP32 on the CPU
    context = objectives.EvalContext(profile=profile, data_dir=args.data_dir)
    if args.teacher:
        teacher, teacher_tok = compress.load_on_device(args.teacher)
        cache = objectives.TeacherCache.build(teacher, teacher_tok or tokenizer)
        del teacher                                                  # its logits are cached: free the device
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
                     "accelerator": str(next(model.parameters()).device), "fidelity": args.fidelity,
                     "proxy_mode": args.proxy_mode, "metrics": metrics})
        return 0
    for name, m in metrics.items():
        arrow = "higher better" if m["higher_is_better"] else "lower better"
        print(f"{name:<26}{m['value']:>18.6g}  {m['unit']:<12}{arrow:<15}{m.get('kind', '')}".rstrip())
    return 0
