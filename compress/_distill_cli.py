"""`python -m search distill --student DIR --teacher M --steps N --out DIR2`: recover a pruned checkpoint.

Loads the pruned student directory and the dense teacher (both float32), reads the layer map from the
student's plan.json, distills, and saves a complete checkpoint (plan.json carried over, plus the
distillation numbers) with compress.save_pruned. A non-empty --out is refused before any loading.
"""
from __future__ import annotations

import dataclasses
import os
import time

from ._distill import DistillSchedule, distill
from ._distill_data import fidelity, heldout_blocks
from ._io import check_output_dir, read_plan_record, save_pruned
from ._models import load_on_device
from ._plan import Plan

SCHEDULE_FIELDS = tuple(f.name for f in dataclasses.fields(DistillSchedule) if f.name != "steps")


def run_distill(student_dir: str | os.PathLike, teacher: str | os.PathLike, steps: int, out: str | os.PathLike, *,
                force: bool = False, on_report=None, **schedule_overrides) -> dict:
    """Distill and save; return before/after held-out KL-to-teacher and perplexity (flat dict)."""
    check_output_dir(out, force=force)
    unknown = sorted(set(schedule_overrides) - set(SCHEDULE_FIELDS))
    if unknown:
        raise ValueError(f"unknown schedule settings {unknown}; known: {', '.join(SCHEDULE_FIELDS)}")
    schedule = DistillSchedule(steps=steps, **schedule_overrides)  # validates (and refuses datasets) up front
    record = read_plan_record(student_dir)
    realised = record.get("realised") or {}
    layer_map = realised.get("layer_map")
    if layer_map is None and schedule.hidden_weight > 0:
        raise ValueError(f"{student_dir} has no plan.json with realised.layer_map; hidden-state matching needs it")
    student, student_tok = load_on_device(student_dir)     # FP16 on a GPU, FP32 on the CPU
    teacher_model, teacher_tok = load_on_device(teacher)
    tokenizer = student_tok or teacher_tok
    if tokenizer is None:
        raise ValueError(f"neither {student_dir} nor {teacher} has a tokenizer")

    heldout = heldout_blocks(tokenizer, seq_len=schedule.seq_len, count=schedule.heldout_blocks, hub=schedule.hub)
    where = next(student.parameters()).device
    before = fidelity(student, teacher_model, heldout, device=where)
    start = time.perf_counter()
    student, history = distill(student, teacher_model, tokenizer, schedule, layer_map=layer_map, on_report=on_report)
    seconds = time.perf_counter() - start
    student.to(where)                       # distill() hands the student back in FP32 on the CPU
    after = fidelity(student, teacher_model, heldout, device=where)
    result = {"before_kl": before["heldout_kl"], "before_ppl": before["heldout_ppl"],
              "after_kl": after["heldout_kl"], "after_ppl": after["heldout_ppl"],
              "steps": history[-1]["step"] if history else 0, "seconds": round(seconds, 2),
              "zero_stage": schedule.zero_stage, "teacher": str(teacher)}
    plan = Plan.from_dict(record["plan"]) if record.get("plan") else None
    summary = {**realised, "distillation": {**result, "schedule": dataclasses.asdict(schedule)}}
    save_pruned(student, tokenizer, out, plan=plan, summary=summary, force=force)
    return {**result, "out": str(out)}
