"""Validate a finished search on a device: export its top-k checkpoints to GGUF, run them, and put
the measured decode / prefill speed and peak memory next to what the search's models predicted.

`experiment` is the search's experiment record (search/_record.py, passed down: cluster/ sits below search/):
it resolves the top-k checkpoints (wherever the experiment's storage is, and after its folder moved),
names validation-<device>.json and exports/, and adds the measurements to the experiment's MLflow parent
run. Every number is labelled: `simulated` (the search's models, for llama.cpp: the runtime that ran) or
the backend's kind, `measured-emulated` / `measured-phone` (objectives/_provenance.py). `calibrate`:
a profile file to fit the runtime's costs into (cluster/_calibrate.py).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from ._devices import DEFAULT_GEN_TOKENS, DEFAULT_PROMPT_TOKENS, DEFAULT_REPETITIONS, ValidationResult

DEFAULT_TOP = 3
DEFAULT_DEVICE = "emulated"
RUNTIME = "llama.cpp"          # what both backends run (a GGUF file)


def validate_experiment(experiment, *, top: int = DEFAULT_TOP, device: str = DEFAULT_DEVICE, profile=None,
                        backend_options: dict | None = None, prompt_tokens: int = DEFAULT_PROMPT_TOKENS,
                        gen_tokens: int = DEFAULT_GEN_TOKENS, repetitions: int = DEFAULT_REPETITIONS,
                        on_cluster: bool = False, calibrate=None) -> dict:
    """Returns the validation record (also written to validation-<device>.json). profile: a name, profile
    file or DeviceProfile; None: the experiment's own device and budget. on_cluster: run through Ray
    (adb runs go to a node advertising the `phone` resource). calibrate: a profile file to write the
    fitted llama.cpp costs into."""
    from compress._export_gguf import export_gguf
    from ._calibrate import calibrate as fit_into, check_target
    from ._devices import get_backend, kind_of_device, validate_on_cluster
    kind = kind_of_device(device)                                       # unknown device: did-you-mean
    if calibrate is not None:
        check_target(calibrate)
    entries = experiment.top_entries(top, require_checkpoints=True)
    profile = experiment.profile(profile, runtime=RUNTIME)
    options = {**profile_options(device, profile), **(backend_options or {})}
    backend = None if on_cluster else get_backend(device, **options)   # bad names / options fail here
    run_args = dict(prompt_tokens=prompt_tokens, gen_tokens=gen_tokens, repetitions=repetitions)
    candidates = []
    for entry in entries:
        checkpoint = Path(entry["dir"])
        gguf = experiment.exports / f"{checkpoint.name}.gguf"
        if not _up_to_date(gguf, checkpoint):
            export_gguf(checkpoint, gguf, dtype="f16", force=True)
        if on_cluster:
            result = validate_on_cluster(gguf, backend=device, options=options, **run_args)
        else:
            result = backend.run(gguf, **run_args)
        simulated = simulate(checkpoint, profile, prompt_tokens=prompt_tokens, gen_tokens=gen_tokens)
        candidates.append(_record(entry, gguf, result, simulated, kind=kind))
        print(f"rank {entry.get('rank')}: {_summary_line(result, simulated, kind)}", file=sys.stderr, flush=True)
    record = {"experiment": experiment.name, "device": device, "kind": kind, "profile": profile.name,
              "runtime": RUNTIME, "budget_bytes": profile.memory_budget_bytes,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "settings": run_args, "candidates": candidates}
    if calibrate is not None:
        record["calibration"] = {"file": str(calibrate), **fit_into(record, profile, calibrate, runtime=RUNTIME)}
    path = experiment.validation_file(device)
    experiment.write_json(path, record)
    experiment.log_to_parent(metrics=_metrics(record), files=[(path, None)], tags={f"measured.{kind}": device})
    return record


def profile_options(device: str, profile) -> dict:
    """Backend settings a device profile implies (explicit backend options override them)."""
    if device == "emulated":
        return {"budget_bytes": profile.memory_budget_bytes, "phone_bandwidth": profile.decode_bandwidth_bytes_per_s,
                "phone_flops": profile.compute_flops_per_s, "context_length": profile.context_length,
                "batch": profile.prefill_chunk, "flash_attention": profile.flash_attention}
    if device == "adb":
        return {"budget_bytes": profile.memory_budget_bytes, "flash_attention": profile.flash_attention}
    return {}


def simulate(checkpoint: Path, profile, *, prompt_tokens: int, gen_tokens: int) -> dict:
    """The search's own predictions for this checkpoint: memory model and throughput model, at the
    context the measurement ran with (and decode at the profile's full context, the searched worst case)."""
    import compress
    from objectives._memory import estimate_memory
    from objectives._throughput import decode_bytes_per_token, decode_tokens_per_s, prefill_tokens_per_s
    shapes = compress.shapes_from_config(compress.load_config(str(checkpoint)))
    memory = estimate_memory(shapes, profile)
    context = prompt_tokens + gen_tokens // 2          # the average context of the measured decode
    return {"decode_tokens_per_s": decode_tokens_per_s(shapes, profile, context),
            "decode_tokens_per_s_full_context": decode_tokens_per_s(shapes, profile),
            "prefill_tokens_per_s": prefill_tokens_per_s(shapes, profile, prompt_tokens),
            "peak_memory_bytes": memory.total_bytes, "fits": memory.fits,
            "model_bytes": memory.total_bytes - memory.overhead_bytes, "overhead_bytes": memory.overhead_bytes,
            "decode_bytes_per_token": decode_bytes_per_token(shapes, profile, context), "decode_context": context}


def _up_to_date(gguf: Path, checkpoint: Path) -> bool:
    weights = list(checkpoint.glob("*.safetensors"))
    return gguf.is_file() and bool(weights) and gguf.stat().st_mtime >= max(w.stat().st_mtime for w in weights)


def _ratio(measured, simulated):
    return measured / simulated if measured is not None and simulated else None


def _record(entry: dict, gguf: Path, result: ValidationResult, simulated: dict, *, kind: str) -> dict:
    measured = result.to_dict()
    return {"rank": entry.get("rank"), "trial_id": entry.get("trial_id"), "name": entry.get("name"),
            "folder": entry.get("folder"), "dir": entry.get("dir"), "score": entry.get("score"), "gguf": str(gguf),
            "gguf_bytes": gguf.stat().st_size,
            "measured": {"kind": kind, **{k: measured[k] for k in ("backend", "decode_tokens_per_s",
                                                                   "prefill_tokens_per_s", "peak_memory_bytes",
                                                                   "fits", "notes")}},
            "simulated": {"kind": "simulated", **simulated},
            "search_peak_memory_bytes": entry.get("peak_memory_bytes"),
            "measured_over_simulated": {
                "decode": _ratio(result.decode_tokens_per_s, simulated["decode_tokens_per_s"]),
                "prefill": _ratio(result.prefill_tokens_per_s, simulated["prefill_tokens_per_s"]),
                "peak_memory": _ratio(result.peak_memory_bytes, simulated["peak_memory_bytes"])},
            "raw": result.raw}


def _summary_line(result: ValidationResult, simulated: dict, kind: str) -> str:
    def fmt(v, unit):
        return "n/a" if v is None else f"{v:,.1f} {unit}"
    return (f"{kind}: decode {fmt(result.decode_tokens_per_s, 'tok/s')}, peak {fmt(result.peak_memory_bytes, 'B')}, "
            f"{'fits' if result.fits else 'does not fit'}; simulated: decode "
            f"{fmt(simulated['decode_tokens_per_s'], 'tok/s')}, peak {fmt(simulated['peak_memory_bytes'], 'B')}")


def _metrics(record: dict) -> dict:
    """Parent-run metrics, named by kind: measured-emulated/rank1/decode_tokens_per_s, simulated/rank1/..."""
    metrics = {}
    for cand in record["candidates"]:
        for side in ("measured", "simulated"):
            values = cand[side]
            prefix = f"{values['kind']}/rank{cand['rank']}"
            for key in ("decode_tokens_per_s", "prefill_tokens_per_s", "peak_memory_bytes", "fits"):
                if values.get(key) is not None:
                    metrics[f"{prefix}/{key}"] = float(values[key])
    return metrics
