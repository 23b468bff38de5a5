"""Benchmark: does the search beat its own warm start (OWL), uniform-L1 and random search, and which sampler?

    .venv/bin/python bench/search_quality.py [--trials 60] [--seeds 3] [--samplers tpe,evolution,cmaes,random]
        [--budgets default,0.000555] [--long 200] [--launch 60]

On the bundled stories260k, at two memory budgets (the profile's default, ~0.68 of the dense parameters, and
--budget-gb 0.000555, ~0.55), every sampler runs `--seeds` seeds at the same trial count. Every result is
judged the same way, by a judge no trial optimises: KL(dense || candidate) per token on
  - c4: held-out C4 blocks 8-23 (the search's fitness reads blocks 0-7 of the same held-out split), and
  - sampled: 16 blocks of stories sampled from the dense model itself (temperature 1, fixed seed).
Uniform-L1 and OWL are judged at the same budget (every candidate goes through the same budget repair, so
all sit on the same memory; their parameter counts are recorded next to each KL).

In-process runs ("mode": "in-process") drive the product's own trial code without Ray: the same driver
set-up (teacher cache, rankings, baselines), the same samplers through Optuna's ask/tell, the same
search._trial.Evaluation (plan repair, prune with the shared rankings, the fidelity ladder), and Ray's own
ASHA bracket for early stopping; one trial at a time instead of two. Trials are deterministic, so a plan
already evaluated in this process reuses its scores (an identical re-evaluation). `--launch N` adds one real
`python -m search launch` per budget with the default configuration ("mode": "launch"): its best trial is
judged the same way, and its wall time and the load are recorded.

Writes bench/results/search_quality.json (medians and min/max over seeds).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results" / "search_quality.json"
SEQ_LEN = 256
FITNESS_BLOCKS = 8           # held-out C4 blocks the search's fitness reads (objectives._fidelity.LEVEL_BLOCKS[-1])
JUDGE_BLOCKS = 16
SAMPLE_SEED = 1234
TARGETS = {"default_60_vs_owl": 0.85, "default_200_vs_uniform_c4": 0.40, "half_60_vs_uniform": 0.55}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ---- judge ----------------------------------------------------------------------------------------
def judge_caches(setup) -> dict:
    """Teacher caches for the two judge sets, from the dense model."""
    import torch
    import compress
    import objectives
    from search._trial import load_on_device
    model, tokenizer = load_on_device(setup.model_source)
    heldout = compress.token_blocks(tokenizer, compress.texts("c4", split="heldout"), seq_len=SEQ_LEN,
                                    count=FITNESS_BLOCKS + JUDGE_BLOCKS)[FITNESS_BLOCKS:]
    torch.manual_seed(SAMPLE_SEED)
    bos = torch.full((64, 1), tokenizer.bos_token_id)
    with torch.no_grad():
        out = model.generate(bos, do_sample=True, top_k=0, top_p=1.0, temperature=1.0, max_new_tokens=SEQ_LEN - 1,
                             pad_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    ids = []
    for row in out.tolist():
        story = [t for t in row[1:] if t not in (tokenizer.eos_token_id, tokenizer.bos_token_id)]
        ids += [tokenizer.bos_token_id] + story
    sampled = torch.tensor(ids[:SEQ_LEN * JUDGE_BLOCKS]).reshape(-1, SEQ_LEN)
    return {name: objectives.TeacherCache.build(model, tokenizer, tokens=tokens, level_blocks=(tokens.shape[0],))
            for name, tokens in (("c4", heldout), ("sampled", sampled))}


def judge(params: dict, setup, caches: dict) -> dict:
    from search._trial import build_candidate
    plan, result, model, tokenizer = build_candidate(params, setup)
    out = {f"kl_{name}": round(cache.score(model, tokenizer, blocks=cache.tokens.shape[0])["kl_to_teacher"], 4)
           for name, cache in caches.items()}
    return {**out, "params": result.params, "params_fraction": round(result.params / result.base_params, 4)}


# ---- one search, in-process -----------------------------------------------------------------------
def run_search(sampler: str, seed: int, trials: int, setup, baselines: dict, memo: dict) -> dict:
    import optuna
    from ray.tune.schedulers.async_hyperband import _Bracket
    from ray.tune.schedulers.trial_scheduler import TrialScheduler
    import spaces
    from search._searcher import PlanKey, make_sampler
    from search._trial import Evaluation
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    key = PlanKey(setup)
    study = optuna.create_study(direction="maximize", sampler=make_sampler(sampler, seed=seed, key=key,
                                                                            warm_start=baselines["owl"]))
    for name, params in baselines.items():
        study.enqueue_trial(params, user_attrs={"baseline": name})
    bracket = _Bracket(min_t=1, max_t=setup.rungs, reduction_factor=2, s=0) if setup.rungs > 1 else None
    start, stopped, fresh = time.perf_counter(), 0, 0
    for _ in range(trials):
        trial = study.ask()
        spaces.define_space(trial, setup.spec)
        plan_key = key(trial.params)
        scores = memo.setdefault(plan_key, [])
        evaluation = None
        for rung in range(setup.rungs):
            if rung >= len(scores):
                evaluation = evaluation or Evaluation(trial.params, setup)
                evaluation.scores = list(scores)
                scores.append(evaluation.report()["score"])
                fresh += 1
            score = scores[rung]
            trial.report(score, rung + 1)
            if bracket and rung + 1 < setup.rungs and \
                    bracket.on_result(SimpleNamespace(trial_id=trial.number), rung + 1, score) == TrialScheduler.STOP:
                break
        else:
            study.tell(trial, scores[setup.rungs - 1])
            continue
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        stopped += 1
    best = study.best_trial
    return {"sampler": sampler, "seed": seed, "trials": trials, "stopped_early": stopped, "rung_evaluations": fresh,
            "seconds": round(time.perf_counter() - start, 1), "best_fitness": round(best.value, 4),
            "best_name": best.user_attrs.get("baseline") or f"trial {best.number}", "best_params": best.params,
            "agreement": agreement(study, setup.rungs)}


def agreement(study, rungs: int) -> list:
    import objectives
    done = [t for t in study.trials if t.state.name == "COMPLETE" and len(t.intermediate_values) == rungs]
    rhos = objectives.rank_agreement([[t.intermediate_values[k + 1] for k in range(rungs)] for t in done])
    return [None if r is None else round(r, 3) for r in rhos]


# ---- real launches ----------------------------------------------------------------------------------
def launch(budget_gb, trials: int, setup, caches: dict) -> dict:
    root = Path(tempfile.mkdtemp(prefix="edgeprune-quality-"))
    cmd = [sys.executable, "-m", "search", "launch", "--trials", str(trials), "--root", str(root), "--experiment", "q"]
    if budget_gb:
        cmd += ["--budget-gb", str(budget_gb)]
    before, start = load(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"launch failed:\n{proc.stderr[-3000:]}")
    summary = json.loads((root / "q" / "results.json").read_text())["summary"]
    best = summary["best"]
    return {"mode": "launch", "trials": trials, "wall_seconds": round(seconds, 1), "load_before": before,
            "load_after": load(), "best_name": best["name"], "best_fitness": round(best["score"], 4),
            "complete": summary["complete"], "stopped_early": summary["stopped_early"],
            "rung_agreement": summary.get("rung_agreement"), "experiment_dir": str(root / "q"),
            **judge(json.loads(best["params_json"]), setup, caches)}


# ---- driver ----------------------------------------------------------------------------------------
def summarise(runs: list[dict]) -> dict:
    out = {}
    for k in ("kl_c4", "kl_sampled", "params_fraction", "best_fitness"):
        values = [r[k] for r in runs]
        out[k] = {"median": round(statistics.median(values), 4), "min": min(values), "max": max(values)}
    return out


def bench_budget(label: str, budget_gb, args, root: Path) -> dict:
    import experiments
    from search import _driver
    from search._paths import ExperimentDir
    exp = experiments.load_experiment(model=None, overrides={"budget_gb": budget_gb})
    paths = ExperimentDir.create(root, label)
    setup = _driver.build_setup(exp, paths, tracking_uri=None)
    baselines = _driver.prepare_teacher(setup, paths)
    caches = judge_caches(setup)
    out = {"budget_bytes": setup.budget_bytes, "budget_gb": budget_gb, "ladder": setup.ladder,
           "baselines": {name: judge(params, setup, caches) for name, params in baselines.items()}, "samplers": {}}
    print(label, json.dumps(out["baselines"]), flush=True)
    memo: dict = {}
    counts = [args.trials] + ([args.long] if args.long and label == "default" else [])
    for trials in counts:
        for sampler in args.samplers.split(","):
            if trials != args.trials and sampler not in args.long_samplers.split(","):
                continue
            runs = []
            for seed in range(args.seeds):
                run = run_search(sampler, seed, trials, setup, baselines, memo)
                run.update(judge(run.pop("best_params"), setup, caches))
                runs.append(run)
                print(label, json.dumps(run), flush=True)
            out["samplers"][f"{sampler}@{trials}"] = {"mode": "in-process", "runs": runs, **summarise(runs)}
    if args.launch:
        out["launch"] = launch(budget_gb, args.launch, setup, caches)
        print(label, json.dumps(out["launch"]), flush=True)
    return out


def verdicts(result: dict) -> dict:
    """The issue's targets, each with the measured ratio (median best KL / baseline KL) and whether it is met."""
    out = {}
    for label, entry in result["budgets"].items():
        base = entry["baselines"]
        for key, s in entry["samplers"].items():
            for judge_set in ("c4", "sampled"):
                med = s[f"kl_{judge_set}"]["median"]
                out.setdefault(label, {}).setdefault(key, {})[judge_set] = {
                    "vs_owl": round(med / base["owl"][f"kl_{judge_set}"], 3),
                    "vs_uniform_l1": round(med / base["uniform-l1"][f"kl_{judge_set}"], 3)}
        if "launch" in entry:
            out[label]["launch"] = {j: {"vs_owl": round(entry["launch"][f"kl_{j}"] / base["owl"][f"kl_{j}"], 3),
                                        "vs_uniform_l1": round(entry["launch"][f"kl_{j}"] / base["uniform-l1"][f"kl_{j}"], 3)}
                                    for j in ("c4", "sampled")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=60)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--samplers", default="tpe,evolution,cmaes,random")
    ap.add_argument("--budgets", default="default,0.000555", help="comma list: 'default' or a --budget-gb value")
    ap.add_argument("--long", type=int, default=200, help="also this many trials at the default budget (0: skip)")
    ap.add_argument("--long-samplers", default="tpe,evolution", help="samplers run at --long trials")
    ap.add_argument("--launch", type=int, default=0, help="one real `search launch` of N trials per budget")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    torch.set_num_threads(1)
    start, started_load = time.perf_counter(), load()
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                                                  "python": platform.python_version()},
              "load_start": started_load, "args": vars(args), "judge": __doc__.split("\n\n")[2].strip(),
              "budgets": {}}
    with tempfile.TemporaryDirectory(prefix="edgeprune-quality-") as tmp:
        for budget in args.budgets.split(","):
            label = "default" if budget == "default" else f"budget-{budget}"
            result["budgets"][label] = bench_budget(label, None if budget == "default" else float(budget), args,
                                                    Path(tmp))
    result.update(load_end=load(), wall_seconds=round(time.perf_counter() - start, 1), targets=TARGETS,
                  ratios=verdicts(result))
    from compress._atomic import write_json
    write_json(Path(args.out), result)
    print(json.dumps(result["ratios"], indent=1))


if __name__ == "__main__":
    main()
