"""Benchmark: search quality on a real LLM (SmolLM2-135M-Instruct) against the structured pruning people use.

    .venv/bin/python bench/search_quality_llm.py --model MODEL [--fractions 0.8,0.65,0.5] [--samplers evolution,tpe,cmaes]
        [--seeds 3] [--trials 60] [--long 200] [--long-fraction 0.65] [--long-sampler auto] [--set KEY=VALUE ...]
        [--only baselines|searches|long|all] [--out FILE]

At each fraction of the dense parameters (the budget counted in parameters, so every candidate has the same
parameter count, within one MLP channel), judged by bench/_judge.py (C4 documents and dense-sampled text of the
"dev" and "test" splits: never read by calibration or any fitness):
  - every literature baseline of spaces.BASELINES as the literature cuts it (plain slicing; FLAP with its bias
    compensation; no minimum keep: the allocation as computed), "literature";
  - the same baselines as the search's enqueued warm starts, cut by the product (the space's repair and its
    reconstruction), "product";
  - the search: each sampler x seed, `--trials` trials of the product's own trial code in-process (bench/
    search_quality.py run_search: Optuna ask/tell, the fidelity ladder, Ray's ASHA bracket), every baseline
    enqueued first; then `--long` trials for the sampler with the best dev median (or --long-sampler).
Settings of the search (ladder, weights, sampler step) are chosen on dev (see --only tune) and reported on test.
Results are written after every row (resumable: a row already in --out is not recomputed).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import os
import pickle
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
RESULTS = REPO / "bench" / "results" / "search_quality_llm.json"
JUDGE_BLOCKS = {"dev": 16, "test": 24}        # 256-token blocks per judge set (C4 and sampled each)
PROMPT_TOKENS = 32                            # sampled judge: prompts are the judge documents' first tokens
# the search's settings for this model until experiments/<model>.yaml exists (issue 22); --set overrides them
SETTINGS = {"space.criteria": ["l1", "activation", "taylor", "fluctuation", "minitron"],
            "space.reconstruct": True, "space.compensate": False,
            "proxy.ladder": [{"kl_blocks": 1}, {"kl_blocks": 4}]}
TARGETS = {"vs_best_literature_c4": 0.80, "vs_best_literature_sampled": 0.85, "vs_own_warm_start": 0.90}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class Bench:
    """The dense model loaded once (trials deep-copy it), the judge sets, and the results file."""

    def __init__(self, args):
        import torch
        import search._driver as driver
        import search._trial as trial
        import experiments
        self.args, self.out = args, Path(args.out)
        self.result = json.loads(self.out.read_text()) if self.out.exists() else {}
        self.work = Path(args.work)
        self.work.mkdir(parents=True, exist_ok=True)
        overrides = {**SETTINGS, **settings(args.set)}
        self.exp = experiments.load_experiment(model=args.model, overrides=overrides)
        source = self.exp.model
        model, tokenizer = trial.load_on_device(str(__import__("compress").resolve_model(source)))
        self.dense = (model.eval(), tokenizer)
        cached = lambda _source: (shared_copy(self.dense[0]), self.dense[1])   # noqa: E731
        trial.load_on_device = cached          # every trial and the driver: a copy, not a disk load
        driver.load_on_device = cached
        memoize_refit()
        import _judge
        path = self.work / "judge.pt"
        if path.exists():
            self.judge_sets = _judge.load(path)
        else:
            with torch.no_grad():
                self.judge_sets = _judge.build(model, tokenizer, blocks=JUDGE_BLOCKS, prompt=PROMPT_TOKENS)
            _judge.save(self.judge_sets, path)
        self.result.setdefault("date", time.strftime("%Y-%m-%d %H:%M"))
        self.result.update(machine={"cpus": os.cpu_count(), "platform": platform.platform()}, commit=commit(),
                           settings=overrides, judge={"blocks": JUDGE_BLOCKS, "prompt_tokens": PROMPT_TOKENS,
                                                      "dense_perplexity": _judge.dense_perplexity(self.judge_sets),
                                                      "doc": _judge.__doc__.strip()})
        self.result.setdefault("fractions", {})
        self.judged: dict = {}             # (cut, plan key) -> judged: the same candidate is judged once
        self.setups: dict = {}
        self.ratios = None
        self.touched: set = set()          # fractions this process wrote (save merges only those)

    def save(self) -> None:
        """Merge what this process added into the file under a lock: one process per fraction may share it."""
        import fcntl
        from compress._atomic import write_json
        with open(str(self.out) + ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = json.loads(self.out.read_text()) if self.out.exists() else {}
            fractions = current.get("fractions", {})
            for fraction in self.touched:
                fractions[fraction] = self.result["fractions"][fraction]
            write_json(self.out, {**current, **{k: v for k, v in self.result.items() if k != "fractions"},
                                  "fractions": fractions})

    # ---- set-ups --------------------------------------------------------------------------------
    def setup(self, fraction: float):
        """The search's set-up at `fraction` of the dense parameters, the baselines it enqueues (product cut),
        the literature set-up and its baselines."""
        import spaces
        import search_quality as sq
        from search import _driver
        from search._record import ExperimentRecord
        if fraction in self.setups:
            return self.setups[fraction]
        record = ExperimentRecord(self.work, "dense")       # teacher cache and rankings: the dense model's, shared
        record.path.mkdir(parents=True, exist_ok=True)
        memory = _driver.build_setup(self.exp, record)
        dense_params = memory.base_shapes.param_count()
        setup = sq.params_setup(memory, round(fraction * dense_params))
        _driver.prepare_teacher(setup, record, baselines=False)
        rankings = setup.rankings.get() if hasattr(setup.rankings, "get") else setup.rankings
        if self.ratios is None:
            import compress
            model, tokenizer = self.dense
            self.ratios = compress.layer_outlier_ratios(model, compress.calibration_tokens(
                tokenizer, dict(setup.spec.calibration)))
        ratios = self.ratios
        product = _driver.baseline_points(setup, rankings, ratios)
        literature_spec = dataclasses.replace(setup.spec, reconstruct=False, compensate=False, min_keep=0.0)
        literature = dataclasses.replace(setup, spec=literature_spec)
        points = _driver.baseline_points(literature, rankings, ratios)
        cuts = {name: dataclasses.replace(literature, spec=dataclasses.replace(literature_spec,
                                                                             compensate=name == "flap"))
                for name in points}
        self.setups[fraction] = setup, product, cuts, points
        return self.setups[fraction]

    # ---- judging --------------------------------------------------------------------------------
    def judge(self, params: dict, setup) -> dict:
        import _judge
        from search._searcher import PlanKey
        from search._trial import build_candidate, plan_for
        plan = plan_for(params, setup)
        key = repr((setup.spec.reconstruct, setup.spec.compensate, PlanKey(setup)(params)))
        if key not in self.judged:
            start = time.perf_counter()
            _, result, model, tokenizer = build_candidate(params, setup, plan)
            self.judged[key] = {**_judge.judge_model(model, tokenizer, self.judge_sets), "params": result.params,
                                "params_fraction": round(result.params / result.base_params, 5),
                                "layers_kept": len(result.layer_map), "judge_seconds": round(time.perf_counter() - start, 1)}
        return dict(self.judged[key])

    # ---- stages ---------------------------------------------------------------------------------
    def baselines(self, fraction: float) -> None:
        entry = self.result["fractions"].setdefault(str(fraction), {})
        self.touched.add(str(fraction))
        setup, product, cuts, points = self.setup(fraction)
        entry["params_target"] = int(setup.budget_bytes // 2)
        rows = entry.setdefault("baselines", {})
        for name in points:
            row = rows.setdefault(name, {})
            for cut, params, cut_setup in (("literature", points[name], cuts[name]), ("product", product[name], setup)):
                if cut not in row and cut in getattr(self.args, "cuts", "literature,product").split(","):
                    row[cut] = self.judge(params, cut_setup)
                    print(fraction, name, cut, json.dumps(row[cut]), flush=True)
                    self.save()

    def search(self, fraction: float, sampler: str, seed: int, trials: int) -> None:
        import search_quality as sq
        entry = self.result["fractions"].setdefault(str(fraction), {})
        self.touched.add(str(fraction))
        runs = entry.setdefault("searches", {}).setdefault(f"{sampler}@{trials}", {}).setdefault("runs", [])
        if any(r["seed"] == seed for r in runs):
            return
        setup, product, _, _ = self.setup(fraction)
        # trial scores depend on every setting of the search, not only on the plan's shapes
        tag = hashlib.sha256(json.dumps(self.result["settings"], sort_keys=True).encode()).hexdigest()[:10]
        memo_path = self.work / f"memo-{fraction}-{tag}.pkl"
        memo = pickle.loads(memo_path.read_bytes()) if memo_path.exists() else {}
        before = load()
        run = sq.run_search(sampler, seed, trials, setup, product, memo)
        memo_path.write_bytes(pickle.dumps(memo))
        run.update(self.judge(run["best_params"], setup), load_before=before, load_after=load())
        runs.append(run)
        runs.sort(key=lambda r: r["seed"])
        entry["searches"][f"{sampler}@{trials}"].update(summarise(runs))
        print(fraction, sampler, trials, seed, json.dumps({k: v for k, v in run.items() if k != "best_params"}),
              flush=True)
        self.save()


    def tune(self, fraction: float, n: int = 8) -> None:
        """Dev-split choice of the fitness (ladder length and score terms): Spearman, over `n` mutations (the
        evolution's, depth lever included) of each of the two best product baselines (by dev C4 KL), of the
        fitness KL on 1 / 2 / 4 / 8 held-out blocks, and of KL + log perplexity ratio on 8, with the dev
        judge's KL. What a search compares late: neighbours of its warm start. (1 / 2 / 4 / 8 blocks: the
        teacher cache holds the ladder's largest and objectives.LEVEL_BLOCKS.)"""
        import math
        import optuna
        from objectives import spearman
        from search._evolution import EvolutionSampler
        from search._trial import build_candidate
        from spaces import CRITERION
        entry = self.result["fractions"].setdefault(str(fraction), {})
        self.touched.add(str(fraction))
        if "tune" in entry:
            return
        setup, product, _, _ = self.setup(fraction)
        rows = entry["baselines"]
        best = sorted(product, key=lambda name: rows[name]["product"]["kl_c4_dev"])[:2]
        cache = setup.teacher_cache.get() if hasattr(setup.teacher_cache, "get") else setup.teacher_cache
        mutate = EvolutionSampler(seed=0).mutate
        found = []
        for name in best:
            params = product[name]
            dists = {k: optuna.distributions.FloatDistribution(0, 1) for k in params if k.startswith(("attn", "mlp"))}
            if "depth" in params:
                dists["depth"] = optuna.distributions.IntDistribution(0, setup.spec.max_depth)
            for _ in range(n):
                child = {**mutate(params, dists), CRITERION: params[CRITERION]}
                _, _, model, tokenizer = build_candidate(child, setup)
                row = {f"kl@{b}": cache.score(model, tokenizer, blocks=b)["kl_to_teacher"] for b in (1, 2, 4)}
                full = cache.score(model, tokenizer, blocks=8)
                row["kl@8"] = full["kl_to_teacher"]
                row["kl+log_ppl@8"] = full["kl_to_teacher"] + math.log(full["perplexity"] / full["teacher_perplexity"])
                import _judge
                dev = {k: v for k, v in self.judge_sets.items() if k.endswith("_dev")}
                row.update(_judge.judge_model(model, tokenizer, dev))
                found.append(row)
                print("tune", json.dumps(row), flush=True)
        terms = [k for k in found[0] if k.startswith("kl@") or k.startswith("kl+")]
        entry["tune"] = {"candidates": len(found), "around": best, "judged_on": "dev", "rows": found,
                         "spearman": {f"{t} vs {j}": round(spearman([r[t] for r in found], [r[j] for r in found]), 3)
                                      for t in terms for j in ("kl_c4_dev", "kl_sampled_dev")}}
        print("tune", json.dumps(entry["tune"]["spearman"]), flush=True)
        self.save()


def shared_copy(model):
    """A copy of the dense model's modules that shares its weight tensors: a cut replaces modules and tensors
    (compress.prune never writes into a weight), and scoring only reads them, so a trial needs no 0.5 GB copy."""
    memo = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return copy.deepcopy(model, memo)


def memoize_refit() -> None:
    """A trial's cut refits each output projection from the dense weights, the Gram matrix and the kept units
    alone (rankings are shared, so the same Gram tensor object means the same layer): memoize it in-process, so
    a layer whose kept units a trial did not change is not solved again (trials differ in a few layers)."""
    from compress import _prune
    original = _prune.refit
    cache: dict = {}

    def refit(weight, bias, cols, **fit):
        key = (id(fit.get("gram")), id(fit.get("mean")), tuple(weight.shape), cols.cpu().numpy().tobytes())
        if key not in cache:
            if len(cache) > 4000:
                cache.clear()
            cache[key] = original(weight, bias, cols, **fit)
        return cache[key]
    _prune.refit = refit


def settings(items) -> dict:
    import yaml
    return {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in items)}


def summarise(runs: list[dict]) -> dict:
    keys = [k for k in runs[0] if k.startswith(("kl_", "ppl_"))] + ["best_fitness", "seconds"]
    return {"summary": {k: {"median": round(statistics.median(r[k] for r in runs), 4),
                            "min": min(r[k] for r in runs), "max": max(r[k] for r in runs)} for k in keys},
            "seeds": len(runs)}


def commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=REPO).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="registry name or local directory (SmolLM2-135M-Instruct)")
    ap.add_argument("--fractions", default="0.8,0.65,0.5")
    ap.add_argument("--samplers", default="evolution,tpe,cmaes")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--trials", type=int, default=60)
    ap.add_argument("--long", type=int, default=200)
    ap.add_argument("--long-fraction", default="0.65")
    ap.add_argument("--long-sampler", default="auto", help="auto: the sampler with the best dev median")
    ap.add_argument("--only", default="all", choices=["baselines", "tune", "searches", "long", "all"])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--cuts", default="literature,product", help="baselines: which cuts to judge")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "edgeprune-quality-llm"),
                    help="caches kept between runs (judge sets, rankings, trial scores)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    import torch
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))   # oversubscribed shared cores: 2 threads spin
    bench = Bench(args)
    bench.result["args"] = vars(args)
    fractions = [float(f) for f in args.fractions.split(",")]
    if args.only in ("baselines", "all"):
        for fraction in fractions:
            bench.baselines(fraction)
    if args.only == "tune":
        for fraction in fractions:
            bench.tune(fraction)
    if args.only in ("searches", "all"):
        for fraction in fractions:
            for seed in range(args.seeds):
                for sampler in args.samplers.split(","):
                    bench.search(fraction, sampler, seed, args.trials)
    if args.only in ("long", "all") and args.long:
        fraction = float(args.long_fraction)
        sampler = args.long_sampler
        if sampler == "auto":            # (other processes may have added searches since this one started)
            found = json.loads(bench.out.read_text())["fractions"][str(fraction)]["searches"]
            sampler = min((k for k in found if k.endswith(f"@{args.trials}")),
                          key=lambda k: found[k]["summary"]["kl_c4_dev"]["median"]).split("@")[0]
        for seed in range(args.seeds):
            bench.search(fraction, sampler, seed, args.long)
    bench.save()


if __name__ == "__main__":
    main()
