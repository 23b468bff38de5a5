"""`validate --calibrate FILE`: fit a runtime's fixed memory and per-token cost (and, with enough spread in
model size, the decode bandwidth) from measured candidates, and write them into a user profile file, with
the measurements they came from.

    memory   measured peak = model bytes (weights + KV + activations, objectives/_memory.py) + overhead
             overhead = the largest residual over the candidates + the spread between residuals (an
             upper envelope: the search packs candidates right up to the budget, so a simulated peak
             must not sit below what the runtime really takes, or validate and search disagree on fits)
    decode   measured s/token = token overhead + decode bytes / bandwidth
             token overhead = median residual at the profile's bandwidth; with >= 3 candidates whose
             decode bytes span >= 2x, both are fitted by least squares (kept only if both are positive)

Repeated runs pool: the fit uses this run's candidates and those of every earlier entry in the file with the
same runtime, kind of measurement and settings (context, prompt, generated tokens). One run's candidates share
that run's host state; measured (bench/results/sim_vs_measured*.json), a candidate's decode speed moved by up
to 26 % between runs minutes apart and its memory residual by up to 11 KB, so an envelope and a median over
several runs carry to the next run, one run's do not. A new llama.cpp build or different settings start a new pool.

The file: {"profile": {DeviceProfile fields}, "calibration": [one entry per run, newest last]}. Pass it
wherever a profile name goes (`launch --device FILE`, `validate --profile FILE`, `evaluate --device FILE`).
"""
from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

PAGE = 4096
MIN_BYTES_SPREAD = 2.0          # decode bytes max/min needed to fit the bandwidth as well
MIN_POINTS_FOR_BANDWIDTH = 3


def check_target(path) -> Path:
    """A profile file `validate --calibrate` may write: bad input fails before anything runs."""
    from objectives._profiles import PROFILE_FILE_SUFFIX, read_profile_file
    path = Path(path).expanduser()
    if path.suffix != PROFILE_FILE_SUFFIX:
        raise ValueError(f"--calibrate {path}: a profile file ends in {PROFILE_FILE_SUFFIX}")
    if path.is_dir():
        raise ValueError(f"--calibrate {path} is a directory; give a file name")
    if path.exists():
        read_profile_file(path)                       # an existing file must be a profile: it is updated
    elif not path.parent.is_dir():
        raise ValueError(f"--calibrate {path}: folder {path.parent} does not exist")
    return path


def points(record: dict) -> list[dict]:
    """One point per candidate that ran to completion: what the fit uses (and what the file records)."""
    out = []
    for cand in record["candidates"]:
        m, s = cand["measured"], cand["simulated"]
        if m.get("peak_memory_bytes") is None or not m.get("decode_tokens_per_s"):
            continue
        out.append({"rank": cand.get("rank"), "name": cand.get("name"), "trial_id": cand.get("trial_id"),
                    "measured_peak_memory_bytes": m["peak_memory_bytes"],
                    "measured_decode_tokens_per_s": m["decode_tokens_per_s"],
                    "model_bytes": s["model_bytes"], "decode_bytes_per_token": s["decode_bytes_per_token"]})
    return out


def fit(pts: list[dict], profile) -> dict:
    """{"overhead_bytes", "token_overhead_s", "decode_bandwidth_bytes_per_s", "method"} from the points."""
    if not pts:
        raise ValueError("no candidate ran to completion on the device: nothing to calibrate from")
    residuals = [p["measured_peak_memory_bytes"] - p["model_bytes"] for p in pts]
    envelope = max(residuals) + (max(residuals) - min(residuals))
    overhead = max(0, math.ceil(envelope / PAGE) * PAGE)
    seconds = [1.0 / p["measured_decode_tokens_per_s"] for p in pts]
    nbytes = [p["decode_bytes_per_token"] for p in pts]
    bandwidth, method = profile.decode_bandwidth_bytes_per_s, "token overhead at the profile's bandwidth"
    if len(pts) >= MIN_POINTS_FOR_BANDWIDTH and max(nbytes) >= MIN_BYTES_SPREAD * min(nbytes):
        slope, intercept = _least_squares(nbytes, seconds)
        if slope > 0 and intercept >= 0:
            bandwidth, method = 1.0 / slope, "token overhead and bandwidth by least squares"
    token = max(0.0, statistics.median(t - b / bandwidth for t, b in zip(seconds, nbytes)))
    return {"overhead_bytes": overhead, "token_overhead_s": token, "decode_bandwidth_bytes_per_s": bandwidth,
            "method": method, "memory_residuals_bytes": residuals}


def _least_squares(x: list[float], y: list[float]) -> tuple[float, float]:
    mx, my = statistics.fmean(x), statistics.fmean(y)
    sxx = sum((a - mx) ** 2 for a in x)
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y)) / sxx
    return slope, my - slope * mx


def calibrate(record: dict, profile, path, *, runtime: str = "llama.cpp") -> dict:
    """Fit `runtime`'s costs from a validation record and write them into the profile file at `path`
    (created from `profile` when it does not exist). Returns the calibration entry written."""
    from compress._atomic import write_json
    from objectives._profiles import RuntimeCost, read_profile_file
    path = check_target(path)
    base = read_profile_file(path) if path.exists() else profile
    history = json.loads(path.read_text()).get("calibration", []) if path.exists() else []
    pts = points(record)
    key = _pool_key(record, base, runtime)
    pool = [e for e in history if e.get("pool") == key and e.get("measurements")]
    fitted = fit([p for e in pool for p in e["measurements"]] + pts, base)
    fitted["pooled_runs"] = len(pool) + 1
    cost = RuntimeCost(overhead_bytes=fitted["overhead_bytes"], token_overhead_s=fitted["token_overhead_s"])
    name = base.name if path.exists() else path.stem
    new = base.with_runtime_cost(runtime, cost, name=name,
                                 decode_bandwidth_bytes_per_s=fitted["decode_bandwidth_bytes_per_s"])
    entry = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "experiment": record.get("experiment"),
             "device": record.get("device"), "kind": record.get("kind"), "runtime": runtime,
             "from_profile": profile.name, "settings": record.get("settings"), "pool": key, "fitted": fitted,
             "before": {"overhead_bytes": base.runtimes.get(runtime, RuntimeCost()).overhead_bytes,
                        "token_overhead_s": base.runtimes.get(runtime, RuntimeCost()).token_overhead_s,
                        "decode_bandwidth_bytes_per_s": base.decode_bandwidth_bytes_per_s},
             "measurements": pts}
    write_json(path, {"profile": new.to_dict(), "calibration": [*history, entry]})
    return entry


def _pool_key(record: dict, profile, runtime: str) -> dict:
    """What must match for two runs' measurements to be fitted together (see the module doc)."""
    build = None
    if record.get("kind") == "measured-emulated":
        from importlib.metadata import PackageNotFoundError, version
        try:
            build = f"llama-cpp-python {version('llama-cpp-python')}"
        except PackageNotFoundError:
            pass
    return {"runtime": runtime, "kind": record.get("kind"), "device": record.get("device"), "build": build,
            "settings": record.get("settings"), "context_length": profile.context_length,
            "prefill_chunk": profile.prefill_chunk}
