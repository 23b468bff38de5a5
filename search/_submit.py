"""`python -m search submit --experiment NAME [--top K] --out DIR`: the competition submission bundle.

    DIR/
      README.md            for the organisers, generated from the facts below (search/_submit_readme.py)
      results.csv          the competition CSV, one row per candidate in rank order, + which kind each
                           efficiency number is (measured where `validate` measured it, else simulated)
      submission.json      every fact as data
      check.json           the bundle checks, run in a fresh process after writing (search/_submit_check.py)
      rank<k>-<name>/
        hf/                FP16 Hugging Face checkpoint (modeling_pruned.py + auto_map when shapes differ per
                           layer; its sha256 is in hf/plan.json and checked before trust_remote_code)
        model-f16.gguf     llama.cpp, F16
        mlc/               uniform shapes only: MLC-LLM's FP16 input (weights hard-linked to hf/) + build commands
        candidate.json     plan, realised shapes, parameter count, proxy and OpenCompass scores with item counts,
                           memory and throughput by kind (simulated / measured-emulated / measured-phone), files

Everything comes from the experiment record (search/_record.py): its top-k checkpoints, results, validation
and full-eval files. Bad input (no such experiment, no finished trials, --top above the finished candidates,
a non-empty --out) is refused before anything is written; the bundle appears atomically.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from search._record import ExperimentRecord

GGUF_NAME, HF_DIR, MLC_DIR = "model-f16.gguf", "hf", "mlc"
CANDIDATE_FILE, SUBMISSION_FILE, CSV_FILE, README_FILE, CHECK_FILE = (
    "candidate.json", "submission.json", "results.csv", "README.md", "check.json")


def check_request(record: ExperimentRecord, top: int, out) -> list[dict]:
    """The top `top` candidates, every one with its checkpoint; a one-line ValueError otherwise."""
    import compress
    from compress._atomic import check_dir_target
    if not isinstance(top, int) or top < 1:
        raise ValueError(f"--top must be a positive integer, got {top!r}")
    check_dir_target(out, force=False)                         # a non-empty --out (or a file) is refused
    compress.check_parent(out)
    compress.check_apart(out, [record.path, record.storage.local_path])    # never inside the experiment it reads
    record.check_top(top)
    entries = record.top_entries(top, require_checkpoints=True)
    for entry in entries:                 # truncated or lying weights: refused before anything is written
        compress.check_checkpoint(entry["dir"])
    return entries


def submit(record: ExperimentRecord, *, top: int, out, check: bool = True, echo=print) -> dict:
    """Write the bundle (atomically) and check it in a fresh process. Returns submission.json's content
    with the check results under "check"."""
    from compress._atomic import atomic_dir, write_json
    from compress._io import write_errors
    entries = check_request(record, top, out)
    out = Path(out)
    opencompass = _opencompass_by_trial(record)
    candidates = []
    with write_errors(out), atomic_dir(out) as tmp:
        for entry in entries:
            folder = f"rank{entry['rank']}-{entry.get('name') or entry['trial_id']}"
            echo(f"[submit] {folder}: FP16 checkpoint, GGUF, MLC")
            candidates.append(_write_candidate(record, entry, tmp / folder, opencompass.get(entry["trial_id"])))
        facts = {"experiment": record.name, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 "experiment_dir": str(record.path), "profile": record.profile().to_dict(),
                 "config": record.experiment().to_dict(), "candidates": candidates}
        _write_csv(candidates, tmp / CSV_FILE)
        write_json(tmp / SUBMISSION_FILE, facts)
        from search._submit_readme import readme
        (tmp / README_FILE).write_text(readme(facts))
    echo(f"[submit] wrote {out}")
    if check:
        facts["check"] = run_checks(out, echo=echo)
    return facts


def run_checks(out, *, echo=print, timeout_s: float = 1800) -> dict:
    """The bundle checks in a fresh Python process (nothing of this process's imports or state carries over)."""
    proc = subprocess.run([sys.executable, "-m", "search._submit_check", str(out)], capture_output=True, text=True,
                          timeout=timeout_s, env={**os.environ, "PYTHONPATH": _pythonpath()})
    path = Path(out) / CHECK_FILE
    if not path.is_file():
        raise RuntimeError(f"bundle check process failed (exit {proc.returncode}): {proc.stderr.strip()[-1500:]}")
    result = json.loads(path.read_text())
    for name, cand in result["candidates"].items():
        for check, outcome in cand.items():
            echo(f"[check] {name} {check}: {'ok' if outcome['ok'] else 'FAILED'} {outcome.get('detail', '')}".rstrip())
    return result


def _pythonpath() -> str:
    """The project first on the check process's path (it imports compress / objectives, not this state)."""
    project = str(Path(__file__).resolve().parents[1])
    return os.pathsep.join(p for p in (project, os.environ.get("PYTHONPATH", "")) if p)


# ---- one candidate ----------------------------------------------------------------------------------
def _write_candidate(record: ExperimentRecord, entry: dict, folder: Path, full: dict | None) -> dict:
    import compress
    from compress._export import export_hf
    from compress._io import read_plan_record, sha256_of
    folder.mkdir(parents=True)
    source = Path(entry["dir"])
    export_hf(source, folder / HF_DIR)
    trusted = compress.check_remote_code(folder / HF_DIR)    # the modeling file is byte for byte ours
    _gguf(record, source, folder / GGUF_NAME)
    mlc = _mlc(source, folder / MLC_DIR)
    plan_record = read_plan_record(folder / HF_DIR)
    shapes = compress.shapes_from_config(compress.load_config(str(folder / HF_DIR)))
    row = {**record.trial_row(entry["trial_id"]), **{k: v for k, v in entry.items() if v is not None}}
    cand = {"rank": entry["rank"], "name": entry.get("name"), "trial_id": entry["trial_id"], "folder": folder.name,
            "source_checkpoint": str(source), "plan": plan_record.get("plan"),
            "realised_layers": shapes.to_list(), "uniform": shapes.is_uniform, "parameters": shapes.param_count(),
            "remote_code": trusted, "proxy": _proxy(row, record), "opencompass": _full(full, record.name),
            "numbers": record.numbers(row), "mlc": mlc,
            "files": {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": sha256_of(p)}
                      for p in sorted(folder.rglob("*")) if p.is_file()}}
    from compress._atomic import write_json
    write_json(folder / CANDIDATE_FILE, cand)
    return cand


def _gguf(record: ExperimentRecord, source: Path, target: Path) -> None:
    """The F16 GGUF: the one `validate` exported when it is newer than the weights, else a fresh export."""
    from compress._export_gguf import export_gguf
    cached = record.exports / f"{source.name}.gguf"
    weights = list(source.glob("*.safetensors"))
    if cached.is_file() and weights and cached.stat().st_mtime >= max(w.stat().st_mtime for w in weights):
        _link_or_copy(cached, target)
    else:
        export_gguf(source, target, dtype="f16", force=True)


def _mlc(source: Path, target: Path) -> dict:
    """MLC-LLM build folder for uniform shapes (its FP16 weights hard-linked to hf/'s), else the reason."""
    import compress
    from compress._export_mlc import check_mlc, export_mlc
    try:
        check_mlc(compress.load_config(str(source)))
    except ValueError as err:
        return {"buildable": False, "reason": str(err)}
    export_mlc(source, target, commands_dir=Path(MLC_DIR))       # run from the candidate's folder
    for weights in (target / "hf").glob("*.safetensors"):         # same bytes as hf/: one copy on disk
        twin = target.parent / HF_DIR / weights.name
        if twin.is_file() and twin.stat().st_size == weights.stat().st_size and _same(twin, weights):
            weights.unlink()
            _link_or_copy(twin, weights)
    return {"buildable": True, "commands": (target / "mlc_commands.sh").read_text(),
            "run_from": "the candidate's folder (sh mlc/mlc_commands.sh)"}


def _same(a: Path, b: Path) -> bool:
    from compress._io import sha256_of
    return sha256_of(a) == sha256_of(b)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:                        # another filesystem, or links not allowed
        shutil.copyfile(src, dst)


def _proxy(row: dict, record: ExperimentRecord) -> dict:
    """The search's proxy scores at its last rung: per task accuracy and item count, and their mean."""
    tasks = record.experiment().proxy.tasks
    return {"score": row.get("score"), "proxy_accuracy": row.get("proxy_accuracy"),
            "kl_to_teacher": row.get("kl_to_teacher"), "rung": row.get("rung"),
            "tasks": {t: {"accuracy": row.get(f"{t}_accuracy"), "items": _int(row.get(f"{t}_items"))} for t in tasks}}


def _int(v):
    return int(v) if isinstance(v, (int, float)) else None


def _opencompass_by_trial(record: ExperimentRecord) -> dict:
    if not record.opencompass_json.is_file():
        return {}
    report = json.loads(record.opencompass_json.read_text())
    return {c["trial_id"]: {**c, "limit": report.get("limit")} for c in report.get("candidates", [])}


def _full(c: dict | None, experiment: str) -> dict:
    if c is None:
        return {"ran": False, "how": f"python -m search full-eval --experiment {experiment} --top K, then submit again"}
    return {"ran": c.get("error") is None, "limit": c.get("limit"), "scores": c.get("scores") or {},
            "average": c.get("average"), "items": c.get("items") or {}, "error": c.get("error")}


def _write_csv(candidates: list[dict], path: Path) -> None:
    from objectives._oc_report import competition_row, write_competition_csv
    result = lambda c: {"scores": c["opencompass"]["scores"]} if c["opencompass"].get("ran") else None  # noqa: E731
    write_competition_csv([competition_row(result(c), c["numbers"]) for c in candidates], path)
