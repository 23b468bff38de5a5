"""Benchmark: one search trial of a 7B-shaped model on a GPU, stage by stage.

A random-weight model with Qwen2-7B's shapes (28 layers, hidden 3584, 28 heads / 4 KV heads, FFN 18944,
vocabulary 152064; the bundled tokenizer's ids are a subset) goes through what a trial of
`launch --model qwen-7b` does, with the project's own functions: build + save the dense checkpoint,
the once-per-experiment preparation (load, teacher cache, OWL ratios), load + prune per criterion,
every objective at every rung, one whole level-0 trial (search._trial.trial_body), DeepSpeed BF16
distillation steps of a pruned student against a frozen BF16 teacher (memory estimated from shapes
next to what CUDA really allocated), and saving the top-k checkpoint. Each stage's seconds and peak
GPU memory are written to the results file as soon as the stage ends, so a run cut short by a time
limit still leaves what it measured.

    python bench/gpu_trial.py                     # on a GPU machine -> bench/results/gpu_trial.json
    python bench/gpu_trial.py --shape tiny --out /tmp/x.json    # the same stages on the CPU, seconds

Targets (issue 10): level-0 trial (prune + proxy level 0 + KL) <= 45 s, level 1 <= 3 min on one H200;
a distillation step of a 7B-shaped student with a BF16 teacher fits one GPU with ZeRO.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._provenance import provenance  # noqa: E402

import compress  # noqa: E402
import experiments  # noqa: E402
import objectives  # noqa: E402
from compress._atomic import write_json  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "gpu_trial.json"
QWEN2_7B = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                num_key_value_heads=4, vocab_size=152064, max_position_embeddings=32768, tie_word_embeddings=False,
                rope_theta=1e6, bos_token_id=1, eos_token_id=2)
TINY = dict(hidden_size=64, intermediate_size=172, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
            vocab_size=576, max_position_embeddings=512, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
SHAPES = {"qwen2-7b": QWEN2_7B, "tiny": TINY}
CRITERIA = ("l1", "activation", "taylor")
DISTILL = dict(steps=3, seq_len=512, batch_size=1, zero_stage=3, precision="bf16", report_every=3, heldout_blocks=1)


class OutOfTime(Exception):
    """The time budget is spent: the run ends here, with every finished stage recorded."""


class Recorder:
    """Stages in order, each with seconds and peak GPU bytes; the file is rewritten after every stage."""

    def __init__(self, out: Path, meta: dict, deadline: float):
        self.out, self.deadline = out, deadline
        self.record = {**meta, "stages": [], "stopped_before": None}

    @contextlib.contextmanager
    def stage(self, name: str, **extra):
        if time.monotonic() > self.deadline:
            self.record["stopped_before"] = name
            self._write()
            raise OutOfTime(name)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        entry = {"stage": name, **extra}
        start = time.perf_counter()
        try:
            yield entry
        except Exception as err:          # a failed stage is a finding: record it, go on with the next
            entry["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:400] if str(err) else ''}"
        finally:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
                entry["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
            entry["seconds"] = round(time.perf_counter() - start, 3)
            self.record["stages"].append(entry)
            print(f"{name}: {entry['seconds']} s {entry.get('error', '')}", flush=True)
            self._write()

    def _write(self):
        write_json(self.out, self.record)


def free_device():
    import gc
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def build_dense(shape: dict, out: Path) -> int:
    """Random FP16 weights made on the device (seconds, not minutes), saved as a HF checkpoint."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    config = Qwen2Config(**shape)
    where = compress.accelerator()
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16 if where.type == "cuda" else torch.float32)
    try:
        with torch.device(where):
            model = Qwen2ForCausalLM(config)
    finally:
        torch.set_default_dtype(before)
    model.save_pretrained(out)
    bundled = Path(compress.resolve_model("stories260k"))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(bundled / name, out / name)
    params = sum(p.numel() for p in model.parameters())
    del model
    return params


def pruning_budget_gb(dense: Path) -> float:
    """A tiny model fits the 12 GiB phone untouched: its modeled peak less 30 % of what pruning can remove."""
    est = objectives.estimate_memory(compress.shapes_from_config(compress.load_config(dense)), "phone-12gb")
    return (est.total_bytes - 0.3 * (est.weight_bytes + est.kv_cache_bytes)) / 1024**3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="qwen2-7b")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgeprune-gpu-trial"))
    ap.add_argument("--time-budget", type=float, default=480, help="seconds; later stages are skipped after it")
    ap.add_argument("--levels", type=int, default=2, help="fidelity rungs to time (0..levels-1)")
    ap.add_argument("--tasks", nargs="+", default=None, help="proxy tasks (default: the YAML's six)")
    args = ap.parse_args(argv)
    where = compress.accelerator()
    meta = {"benchmark": "gpu_trial", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "shape": args.shape,
            "device": torch.cuda.get_device_name(where) if where.type == "cuda" else platform.processor() or "cpu",
            "gpu_total_bytes": torch.cuda.get_device_properties(where).total_memory if where.type == "cuda" else None,
            "torch": torch.__version__, "python": platform.python_version(), "host": platform.node(), **provenance()}
    rec = Recorder(args.out, meta, time.monotonic() + args.time_budget)
    shutil.rmtree(args.work, ignore_errors=True)
    try:
        run_stages(rec, args)
    except OutOfTime as stop:
        print(f"time budget spent: stopped before {stop}", flush=True)
    print(f"wrote {args.out}")
    return 0


QWEN_LADDER = experiments.load_experiment(model="qwen-7b").proxy.ladder


def run_stages(rec: Recorder, args) -> None:
    from search import _driver, _tracking
    from search._record import ExperimentRecord
    from search._trial import plan_for, trial_body
    dense = args.work / "dense"

    with rec.stage("build + save dense FP16 checkpoint") as s:
        s["params"] = build_dense(SHAPES[args.shape], dense)
    free_device()
    exp = experiments.load_experiment(model=str(dense), config=str(Path(__file__).parents[1] / "experiments" /
                                                                   "qwen-7b.yaml"),
                                      # the scoring trial; distillation is timed in its own stage below
                                      # the YAML's ladder with every task scored (its random weights are at chance)
                                      overrides={"proxy.rungs": args.levels, "proxy.unsafe_exec": True,
                                                 "proxy.ladder": [{**r, "chance_z": None} for r in QWEN_LADDER],
                                                 "distill.enabled": False, "proxy.tasks": args.tasks,
                                                 "budget_gb": pruning_budget_gb(dense) if args.shape == "tiny" else None})
    paths = ExperimentRecord.create(args.work, "experiment")
    setup = _driver.build_setup(exp, paths)
    with rec.stage("prepare once per experiment: load + teacher cache + OWL ratios") as s:
        baselines = _driver.prepare_teacher(setup, paths)
    free_device()
    owl = baselines["owl"]
    plan = plan_for(owl, setup)
    rec.record["plan_kept_fraction"] = plan.realised_shapes(setup.base_shapes).param_count() / \
        setup.base_shapes.param_count()
    model = tokenizer = result = None
    for criterion in CRITERIA:
        model = result = None
        free_device()
        with rec.stage(f"load FP16 on the device [{criterion}]"):
            model, tokenizer = compress.load_on_device(dense)
        with rec.stage(f"prune [{criterion}]") as s:
            pruned_plan = dataclasses.replace(plan, importance=criterion)
            result = compress.prune(model, tokenizer, pruned_plan)
            s["params"] = result.params
    # rung 0, then what matters most (saving, a whole trial, distillation); the long rung 1 last
    context = objectives.EvalContext(profile=setup.profile(), teacher_cache=setup.teacher_cache.get())   # a Shipped value
    candidate = objectives.Candidate(shapes=result.shapes, model=model, tokenizer=tokenizer)
    proxy = objectives.ProxyAccuracyObjective(tasks=tuple(setup.tasks), unsafe_exec=True)
    score_rung(rec, proxy, candidate, context, 0)
    with rec.stage("save the top-k FP16 checkpoint"):     # save_pruned moves the model to the CPU
        compress.save_pruned(model, tokenizer, args.work / "top", plan=pruned_plan, summary=result.summary())
    model = candidate = result = None
    free_device()
    # a whole trial before distillation: DeepSpeed ZeRO-3 wraps torch's linear for the rest of the process,
    # and a real trial, which distils in Ray Train workers of its own, never scores under that wrapper
    with rec.stage("whole level-0 trial: load + prune + proxy rung 0 + KL (trial_body)") as s:
        reports = []
        trial_body(owl, dataclasses.replace(setup, rungs=1), _tracking.TrialRun(None, None), baseline="owl",
                   report=lambda m: reports.append(m) or False)
        s.update(score=reports[-1]["score"], kl_to_teacher=reports[-1]["kl_to_teacher"])
    free_device()
    # the trial's own student (the 12 GiB plan); if it cannot fit one GPU, a half-size one
    half = compress.Plan.uniform(setup.base_shapes.num_layers, attn_keep=0.5, mlp_keep=0.5, importance="l1")
    for label, student_plan in (("12 GiB plan", plan), ("half the parameters", half)):
        if distill_steps(rec, setup, student_plan, dense, label):
            break
        free_device()
    free_device()
    if args.levels > 1:
        model, tokenizer = compress.load_on_device(args.work / "top")   # the saved candidate, 12 GiB plan
        candidate = objectives.Candidate(shapes=compress.shapes_from_config(model.config), model=model,
                                         tokenizer=tokenizer)
        for level in range(1, args.levels):
            score_rung(rec, proxy, candidate, context, level)


def score_rung(rec: Recorder, proxy, candidate, context, level: int) -> None:
    with rec.stage(f"proxy accuracy, rung {level}") as s:
        s.update(proxy.evaluate(candidate, context, level))
    with rec.stage(f"KL + perplexity, rung {level}") as s:
        s.update(objectives.evaluate_all(candidate, context, objectives=["fidelity"], fidelity=level, weights=None))


def distill_steps(rec: Recorder, setup, plan, dense: Path, label: str) -> bool:
    """BF16 DeepSpeed steps of the pruned student against the frozen BF16 teacher, ZeRO stage of the YAML.
    False when the memory estimate refused it (nothing was loaded then)."""
    schedule = compress.DistillSchedule(**{**DISTILL, "zero_stage": setup.distill["zero_stage"]})  # the YAML's
    where = compress.accelerator()
    student_shapes = plan.realised_shapes(setup.base_shapes)
    estimate = {g: compress.estimate_for_shapes(student_shapes, setup.base_shapes, schedule, gpus=g,
                                                device_type=where.type) for g in (1, 2)}
    free = compress.available_memory(where.type)
    rec.record.setdefault("distill_estimates", []).append(
        {"student": label, "student_params": student_shapes.param_count(), "free_bytes": free,
         **{f"estimate_{g}_gpu": e for g, e in estimate.items()}})
    if estimate[1]["total"] > free:
        rec.record["distill_estimates"][-1]["fits"] = False
        return False
    with rec.stage(f"distill {schedule.steps} BF16 steps, ZeRO-{schedule.zero_stage}, 1 GPU, student {label}",
                   schedule=DISTILL) as s:
        student, tok = compress.load_on_device(dense)
        result = compress.prune(student, tok, plan)
        teacher, _ = compress.load_on_device(dense)
        s.update(student_params=result.params, estimate_bytes=estimate[1]["total"])
        if where.type == "cuda":
            torch.cuda.reset_peak_memory_stats()   # the stage's peak is the training's, not the loading's
        start = time.perf_counter()
        _, history = compress.distill(student, teacher, tok, schedule, layer_map=result.layer_map)
        s.update(loop_seconds=round(time.perf_counter() - start, 3), final=history[-1])
    return True


if __name__ == "__main__":
    raise SystemExit(main())
