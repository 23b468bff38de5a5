"""Validate a finished search on a device: export its top-k checkpoints to GGUF, run them, and put
the measured decode / prefill speed and peak memory next to what the search's models predicted.

Writes <experiment>/validation.json (atomically) and, when the experiment has an MLflow parent run
(state.json: tracking_uri, parent_run_id), logs the measurements there as metrics plus the file.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from compress._atomic import write_json

from ._devices import DEFAULT_GEN_TOKENS, DEFAULT_PROMPT_TOKENS, DEFAULT_REPETITIONS, ValidationResult

DEFAULT_TOP = 3
DEFAULT_DEVICE = "emulated"
EXPORT_SUBDIR = "exports"
VALIDATION_FILE = "validation.json"
GB = 1024**3                     # budget_gb's unit, as the search reads it


def validate_experiment(experiment_dir, *, top: int = DEFAULT_TOP, device: str = DEFAULT_DEVICE, profile=None,
                        backend_options: dict | None = None, prompt_tokens: int = DEFAULT_PROMPT_TOKENS,
                        gen_tokens: int = DEFAULT_GEN_TOKENS, repetitions: int = DEFAULT_REPETITIONS,
                        on_cluster: bool = False) -> dict:
    """Returns the validation record (also written to validation.json). profile: a name or
    DeviceProfile; None: the experiment's own device and budget. on_cluster: run through Ray
    (adb runs go to a node advertising the `phone` resource)."""
    from compress._export_gguf import export_gguf
    from ._devices import get_backend, validate_on_cluster
    exp_dir = Path(experiment_dir)
    entries = _top_entries(exp_dir, top)
    profile = _profile(exp_dir, profile)
    options = {**profile_options(device, profile), **(backend_options or {})}
    backend = None if on_cluster else get_backend(device, **options)   # bad names / options fail here
    run_args = dict(prompt_tokens=prompt_tokens, gen_tokens=gen_tokens, repetitions=repetitions)
    candidates = []
    for entry in entries:
        checkpoint = Path(entry["dir"])
        gguf = exp_dir / EXPORT_SUBDIR / f"{checkpoint.name}.gguf"
        if not _up_to_date(gguf, checkpoint):
            export_gguf(checkpoint, gguf, dtype="f16", force=True)
        if on_cluster:
            result = validate_on_cluster(gguf, backend=device, options=options, **run_args)
        else:
            result = backend.run(gguf, **run_args)
        simulated = simulate(checkpoint, profile, prompt_tokens=prompt_tokens, gen_tokens=gen_tokens)
        candidates.append(_record(entry, gguf, result, simulated))
        print(f"rank {entry.get('rank')}: {_summary_line(result, simulated)}", file=sys.stderr, flush=True)
    record = {"experiment": exp_dir.name, "device": device, "profile": profile.name,
              "budget_bytes": profile.memory_budget_bytes, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "settings": run_args, "candidates": candidates}
    path = exp_dir / VALIDATION_FILE
    write_json(path, record)
    _log_mlflow(exp_dir, record, path)
    return record


def profile_options(device: str, profile) -> dict:
    """Backend settings a device profile implies (explicit backend options override them)."""
    if device == "emulated":
        return {"budget_bytes": profile.memory_budget_bytes, "phone_bandwidth": profile.decode_bandwidth_bytes_per_s,
                "phone_flops": profile.compute_flops_per_s, "context_length": profile.context_length,
                "batch": profile.prefill_chunk}
    if device == "adb":
        return {"budget_bytes": profile.memory_budget_bytes}
    return {}


def simulate(checkpoint: Path, profile, *, prompt_tokens: int, gen_tokens: int) -> dict:
    """The search's own predictions for this checkpoint: memory model and throughput model, at the
    context the measurement ran with (and decode at the profile's full context, the searched worst case)."""
    import compress
    from objectives._memory import estimate_memory
    from objectives._throughput import decode_tokens_per_s, prefill_tokens_per_s
    shapes = compress.shapes_from_config(compress.load_config(str(checkpoint)))
    memory = estimate_memory(shapes, profile)
    return {"decode_tokens_per_s": decode_tokens_per_s(shapes, profile, prompt_tokens + gen_tokens // 2),
            "decode_tokens_per_s_full_context": decode_tokens_per_s(shapes, profile),
            "prefill_tokens_per_s": prefill_tokens_per_s(shapes, profile, prompt_tokens),
            "peak_memory_bytes": memory.total_bytes, "fits": memory.fits}


def _top_entries(exp_dir: Path, top: int) -> list[dict]:
    if not isinstance(top, int) or top < 1:
        raise ValueError(f"--top must be a positive integer, got {top!r}")
    path = exp_dir / "results.json"
    if not path.is_file():
        raise ValueError(f"{path} not found: validate a finished experiment (its search writes results.json)")
    entries = (json.loads(path.read_text()).get("summary") or {}).get("top") or []
    if not entries:
        raise ValueError(f"{path} lists no top-k checkpoints (search.top_k was 0?)")
    for entry in entries[:top]:
        if not (Path(entry.get("dir", "")) / "config.json").is_file():
            raise ValueError(f"top-k checkpoint {entry.get('dir')!r} (rank {entry.get('rank')}) is missing")
    return entries[:top]


def _profile(exp_dir: Path, profile):
    from objectives._profiles import get_profile
    if profile is not None:
        return get_profile(profile)
    config = exp_dir / "config.yaml"
    if not config.is_file():
        raise ValueError(f"{config} not found; pass a device profile explicitly")
    import yaml
    data = yaml.safe_load(config.read_text()) or {}
    resolved = get_profile(data.get("device") or "phone-12gb")
    if data.get("budget_gb"):
        resolved = resolved.with_budget(float(data["budget_gb"]) * GB)
    return resolved


def _up_to_date(gguf: Path, checkpoint: Path) -> bool:
    weights = list(checkpoint.glob("*.safetensors"))
    return gguf.is_file() and bool(weights) and gguf.stat().st_mtime >= max(w.stat().st_mtime for w in weights)


def _ratio(measured, simulated):
    return measured / simulated if measured is not None and simulated else None


def _record(entry: dict, gguf: Path, result: ValidationResult, simulated: dict) -> dict:
    measured = result.to_dict()
    return {"rank": entry.get("rank"), "trial_id": entry.get("trial_id"), "name": entry.get("name"),
            "dir": entry.get("dir"), "score": entry.get("score"), "gguf": str(gguf),
            "gguf_bytes": gguf.stat().st_size,
            "measured": {k: measured[k] for k in ("backend", "decode_tokens_per_s", "prefill_tokens_per_s",
                                                  "peak_memory_bytes", "fits", "notes")},
            "simulated": simulated,
            "search_peak_memory_bytes": entry.get("peak_memory_bytes"),
            "measured_over_simulated": {
                "decode": _ratio(result.decode_tokens_per_s, simulated["decode_tokens_per_s"]),
                "prefill": _ratio(result.prefill_tokens_per_s, simulated["prefill_tokens_per_s"]),
                "peak_memory": _ratio(result.peak_memory_bytes, simulated["peak_memory_bytes"])},
            "raw": result.raw}


def _summary_line(result: ValidationResult, simulated: dict) -> str:
    def fmt(v, unit):
        return "n/a" if v is None else f"{v:,.1f} {unit}"
    return (f"decode {fmt(result.decode_tokens_per_s, 'tok/s')} (simulated "
            f"{fmt(simulated['decode_tokens_per_s'], 'tok/s')}), peak {fmt(result.peak_memory_bytes, 'B')} "
            f"(simulated {fmt(simulated['peak_memory_bytes'], 'B')}), {'fits' if result.fits else 'does not fit'}")


def _log_mlflow(exp_dir: Path, record: dict, path: Path) -> None:
    state_path = exp_dir / "state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    uri, run_id = state.get("tracking_uri"), state.get("parent_run_id")
    if not uri or not run_id:
        return
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=uri)
    device = record["device"]
    for cand in record["candidates"]:
        prefix = f"validation_{device}_rank{cand['rank']}"
        values = {"decode_tokens_per_s": cand["measured"]["decode_tokens_per_s"],
                  "prefill_tokens_per_s": cand["measured"]["prefill_tokens_per_s"],
                  "peak_memory_bytes": cand["measured"]["peak_memory_bytes"],
                  "fits": float(cand["measured"]["fits"]),
                  "simulated_decode_tokens_per_s": cand["simulated"]["decode_tokens_per_s"],
                  "simulated_peak_memory_bytes": cand["simulated"]["peak_memory_bytes"]}
        for key, value in values.items():
            if value is not None:
                client.log_metric(run_id, f"{prefix}_{key}", float(value))
    client.log_artifact(run_id, str(path))
