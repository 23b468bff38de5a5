"""Benchmark: what limits the warm starts' KL at equal parameter count, and which training-free changes move it?

    .venv/bin/python bench/reconstruction_limits.py [--budgets default,half] [--variants ...]

Why this exists: bench/search_quality.py misses one figure of issue 12 (about half the parameters, equal
parameter count, text sampled from the dense model: 0.58 x uniform-L1 against a 0.55 target), and the
search gains only ~6 % over its own warm start there. This measures the warm start itself (OWL's and
uniform-L1's plans, cut by the product with reconstruction) under changes to the cut that need no training
and no data but C4, judged exactly as search_quality judges (its judge sets, its "params" budget: OWL's
parameter count at the memory budget), as a fraction of uniform-L1 cut without reconstruction:

  product        the product's cut with calibration from all C4 training documents (space.calibration.select
                 1.0, every model's default but the bundled one's): 64 blocks of 128 tokens, seed 0, damping 0.01
  seed1, seed2   the same with another draw of calibration documents (how much the draw alone moves it)
  select30_sN    calibration from the 30 % of C4 documents the dense model predicts best (lowest NLL on their
                 first seq_len tokens), seed N: "in-domain" C4 without reading the judge's text. This bench's
                 own version (it ranks, then draws); the product's space.calibration.select draws, then ranks,
                 so its blocks differ: search_quality.py measures the product's
  damp0.1, damp1 10x / 100x the ridge of the least-squares refit (less fitted to C4)
  obs            units ranked by greedy OBS (remove the unit whose loss, after the refit, is smallest; ZipLM /
                 SlimGPT) instead of the plan's criterion
  bias           reconstruction with an intercept (FLAP's bias compensation on top of the refit: the refit
                 projection gets a bias; a different architecture, so measured only)

Each variant runs in its own process (the non-product ones patch compress internals there). Writes
bench/results/reconstruction_limits.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench._provenance import provenance  # noqa: E402
sys.path.insert(0, str(REPO / "bench"))
RESULTS = REPO / "bench" / "results" / "reconstruction_limits.json"
VARIANTS = ("product", "seed1", "seed2", "select30_s0", "select30_s1", "select30_s2", "damp0.1", "damp1", "obs",
            "bias")
SELECT = 0.3


# ---- variants (patches applied in the child process only) -----------------------------------------
def seed(n: int) -> None:
    from compress import _rankings
    _rankings.CALIBRATION_DEFAULTS["seed"] = n      # rankings, Grams, OWL's ratios and the plans' check alike


def select_predictable(n: int) -> None:
    """Calibration blocks from the SELECT fraction of C4 training documents with the lowest dense NLL."""
    import torch
    import compress
    from compress import _data, _rankings
    from search._trial import load_on_device
    seed(n)

    def calibration_tokens(tokenizer, calibration=None, *, model=None):
        cfg = _rankings.resolved_calibration(calibration)
        docs = _data.texts("c4", split="train")
        model, _ = load_on_device(SOURCE[0])
        nll = []
        with torch.no_grad():
            for doc in docs:
                ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer(doc, add_special_tokens=False)["input_ids"]
                                    [:int(cfg["seq_len"]) - 1]])
                nll.append(model(input_ids=ids, labels=ids).loss.item())
        keep = sorted(range(len(docs)), key=nll.__getitem__)[:max(1, round(len(docs) * SELECT))]
        order = torch.randperm(len(keep), generator=torch.Generator().manual_seed(int(cfg["seed"]))).tolist()
        blocks = compress.token_blocks(tokenizer, [docs[keep[i]] for i in order], seq_len=int(cfg["seq_len"]),
                                       count=int(cfg["samples"]))
        assert blocks.shape[0] == int(cfg["samples"]), "not enough selected text"
        return blocks
    _rankings.calibration_tokens = calibration_tokens
    compress.calibration_tokens = calibration_tokens


def damp(value: float) -> None:
    from compress import _reconstruct
    _reconstruct.DAMP = value


def obs() -> None:
    """Register criterion "obs": a unit's score is the step at which greedy OBS removes it (later = kept)."""
    import torch
    from compress import _rankings
    from compress._criteria import CRITERIA, Criterion

    def removal_steps(weight, gram, index):
        w = weight.detach().double().clone()
        h = gram.double()
        hinv = torch.linalg.inv(h + _damp_value() * h.diagonal().mean() * torch.eye(h.shape[0], dtype=h.dtype))
        alive, steps = list(range(index.shape[0])), torch.zeros(index.shape[0], dtype=torch.float64)
        for step in range(index.shape[0]):
            loss = {u: torch.trace(w[:, index[u]] @ torch.linalg.solve(hinv[index[u]][:, index[u]],
                                                                       w[:, index[u]].t())) for u in alive}
            u = min(alive, key=lambda k: float(loss[k]))
            s = index[u]
            inv_ss = torch.linalg.inv(hinv[s][:, s])
            w = w - w[:, s] @ inv_ss @ hinv[s, :]
            hinv = hinv - hinv[:, s] @ inv_ss @ hinv[s, :]
            steps[u] = step + 1
            alive.remove(u)
        return steps

    @CRITERIA.register("obs")
    class GreedyOBS(Criterion):
        requires = frozenset({"gram"})

        def score(self, group):
            consumer = next(c for c in group.couplings if c.consumer)
            return removal_steps(consumer.module.weight, consumer.gram, consumer.index.cpu())

    original = _rankings.score_group

    def score_group(criterion, group, stats):
        for c in group.couplings:
            if c.consumer:
                c.gram = stats.get("gram", {}).get(c.module)
        return original(criterion, group, stats)
    _rankings.score_group = score_group


def _damp_value() -> float:
    from compress import _reconstruct
    return _reconstruct.DAMP


def bias() -> None:
    """Gram of [x, 1] instead of x; the refit solves for the kept columns and an intercept (a new bias)."""
    import torch
    from torch import nn
    from compress import _prune, _statistics
    from compress._groups import kept_indices
    from compress._reconstruct import least_squares

    def accumulate_gram(store, module):
        def hook(_module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            x = torch.cat([x, torch.ones(x.shape[0], 1, device=x.device)], 1)
            store[module] = store.get(module, 0) + x.t() @ x
        return hook

    def cut(owner, group, names, units, gram=None):
        for coupling, name in zip(group.couplings, names):
            kept = kept_indices(coupling, units)
            if not coupling.consumer or gram is None:
                setattr(owner, name, _prune._slice_linear(coupling.module, **({"cols": kept} if coupling.consumer
                                                                            else {"rows": kept})))
                continue
            weight = coupling.module.weight.data
            padded = torch.cat([weight, weight.new_zeros(weight.shape[0], 1)], 1)     # the dense model: no bias
            solved = least_squares(padded, gram, torch.cat([kept, kept.new_tensor([weight.shape[1]])]))
            new = _prune._slice_linear(coupling.module, cols=kept, weight=solved[:, :-1])
            new.bias = nn.Parameter(solved[:, -1].contiguous(), requires_grad=False)
            setattr(owner, name, new)
    _statistics.accumulate_gram = accumulate_gram
    _prune._cut = cut


PATCHES = {"product": lambda: None, "seed1": lambda: seed(1), "seed2": lambda: seed(2),
           **{f"select30_s{n}": (lambda n=n: select_predictable(n)) for n in range(3)},
           "damp0.1": lambda: damp(0.1), "damp1": lambda: damp(1.0), "obs": obs, "bias": bias}
SOURCE: list = []


# ---- one variant at one budget (child process) -----------------------------------------------------
def child(budget: str, variant: str) -> dict:
    import experiments
    import search_quality as sq
    from search import _driver
    from search._record import ExperimentRecord
    PATCHES[variant]()
    overrides = {"budget_gb": sq.HALF_BUDGET_GB if budget == "half" else None, "space.calibration": {"select": 1.0}}
    if variant == "obs":
        overrides["space.criteria"] = ["l1", "activation", "obs"]
    exp = experiments.load_experiment(model=None, overrides=overrides)
    record = ExperimentRecord.create(Path(tempfile.mkdtemp()), "limits")
    memory = _driver.build_setup(exp, record)
    SOURCE.append(memory.model_source)
    baselines = _driver.prepare_teacher(memory, record)
    caches = sq.judge_caches(memory)
    setup = sq.params_setup(memory, sq.judge(baselines["owl"], memory, caches)["params"])
    plain = sq.judge(baselines["uniform-l1"], sq.without_reconstruction(setup), caches)
    out = {"uniform-l1 (no reconstruction)": plain}
    for name, params in baselines.items():
        if variant == "obs":
            params = {**params, "criterion": "obs"}
        judged = sq.judge(params, setup, caches)
        judged.update({f"x_uniform_{j}": round(judged[f"kl_{j}_test"] / plain[f"kl_{j}_test"], 3) for j in ("c4", "sampled")})
        out[f"{name}+lsq"] = judged
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="default,half")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--child", nargs=2, metavar=("BUDGET", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(*args.child)), flush=True)
        return
    import search_quality as sq
    start, load_start = time.time(), sq.load()
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.node()} {platform.machine()}, "
              f"{__import__('os').cpu_count()} cores", "load_start": load_start, "judge": sq.__doc__.split("\n\n")[1],
              "variants": __doc__.split("\n\n")[2], "budgets": {}, **provenance()}
    for budget in args.budgets.split(","):
        rows = result["budgets"][budget] = {}
        for variant in args.variants.split(","):
            proc = subprocess.run([sys.executable, __file__, "--child", budget, variant], capture_output=True,
                                  text=True, cwd=REPO)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                raise SystemExit(f"{budget} {variant} failed:\n{proc.stderr[-3000:]}")
            rows[variant] = json.loads(line[len("RESULT "):])
            print(budget, variant, {k: (v.get("x_uniform_c4"), v.get("x_uniform_sampled")) for k, v in
                                    rows[variant].items() if "+lsq" in k}, flush=True)
        for prefix, names in (("product", ("product", "seed1", "seed2")),
                              ("select30", ("select30_s0", "select30_s1", "select30_s2"))):
            present = [rows[n]["owl+lsq"] for n in names if n in rows]
            if len(present) == 3:
                rows[f"{prefix}: median over calibration seeds 0-2 (owl+lsq)"] = {
                    j: statistics.median(p[f"x_uniform_{j}"] for p in present) for j in ("c4", "sampled")}
    result.update(load_end=sq.load(), wall_seconds=round(time.time() - start, 1))
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", RESULTS)


if __name__ == "__main__":
    main()
