"""The checks of a submission bundle, run as `python -m search._submit_check DIR` in a fresh process (what the
organisers will do, without anything this project's process imported or patched), per candidate:

    transformers  hf/ loads with plain AutoModelForCausalLM.from_pretrained(trust_remote_code=True) after its
                  modeling file's sha256 is checked, and gives the same logits as the experiment's own copy
    files         every file's size and sha256 are those recorded in candidate.json
    llama.cpp     llama-cpp-python loads model-f16.gguf and evaluates a prompt to finite logits (the top token
                  agreeing with transformers' is recorded, not required: F16 KV cache)
    opencompass   a limited OpenCompass run (GSM8K, 1 item) loads the checkpoint from the bundle; skipped, and
                  said so, where no OpenCompass data is available

Writes DIR/check.json; exit status 0 when every check that ran passed, 1 otherwise.
"""
from __future__ import annotations

import json
import sys
import tempfile
import traceback
from pathlib import Path

PROMPT_IDS = [1, 15, 33, 87, 200, 311, 64, 9, 120, 45]      # any ids below every vocabulary here
LOGIT_ATOL = 1e-5                  # same bytes, same code: the logits must match to float rounding
OC_DATASET, OC_LIMIT, OC_MAX_OUT = "gsm8k_gen", 1, 8
BIG_MODEL = 1_000_000_000          # parameters: above this the logits are compared in FP16


def _logits(directory: Path):
    import torch
    from transformers import AutoModelForCausalLM
    config = json.loads((directory / "config.json").read_text())
    big = (config.get("num_hidden_layers", 0) * config.get("hidden_size", 0) ** 2 * 12) > BIG_MODEL
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(str(directory), trust_remote_code=True,
                                                 dtype=torch.float16 if big else torch.float32).to(device).eval()
    with torch.no_grad():
        out = model(torch.tensor([PROMPT_IDS], device=device)).logits[0].float().cpu()
    del model
    return out


def check_transformers(folder: Path, cand: dict) -> dict:
    import compress
    hf = folder / "hf"
    trusted = compress.check_remote_code(hf)       # ValueError when the modeling file is not ours
    mine = _logits(hf)
    source = Path(cand["source_checkpoint"])
    if not (source / "config.json").is_file():
        return {"ok": False, "detail": f"the experiment's copy {source} is gone: nothing to compare with"}
    theirs = _logits(source)
    diff = float((mine - theirs).abs().max())
    return {"ok": diff <= LOGIT_ATOL, "detail": f"max |logit difference| {diff:.2e} vs the experiment's copy "
            f"({'remote code sha256 checked' if trusted else 'stock transformers class'})", "max_abs_diff": diff,
            "top_token": int(mine[-1].argmax())}


def check_files(folder: Path, cand: dict) -> dict:
    from compress._io import sha256_of
    bad = [name for name, f in cand["files"].items()
           if not (folder / name).is_file() or (folder / name).stat().st_size != f["bytes"]
           or sha256_of(folder / name) != f["sha256"]]
    return {"ok": not bad, "detail": f"{len(cand['files'])} files match candidate.json" if not bad
            else f"differ from candidate.json: {', '.join(bad)}"}


def check_llama_cpp(folder: Path, cand: dict, top_token: int | None) -> dict:
    import numpy as np
    import llama_cpp
    llm = llama_cpp.Llama(model_path=str(folder / "model-f16.gguf"), n_ctx=64, n_batch=16, n_threads=1,
                          flash_attn=True, logits_all=True, verbose=False)
    llm.eval(PROMPT_IDS)
    last = np.asarray(llm.scores[len(PROMPT_IDS) - 1])
    ok = bool(np.isfinite(last).all()) and llm.n_vocab() == len(last)
    agree = None if top_token is None else int(last.argmax()) == top_token
    return {"ok": ok, "detail": f"loaded, {llm.n_vocab()} vocabulary, finite logits; top token "
            f"{'agrees' if agree else 'differs' if agree is False else 'not compared'} with transformers",
            "top_token_agrees": agree}


def check_opencompass(folder: Path) -> dict:
    from objectives import _oc_data
    from objectives._opencompass import TASK_OF_CONFIG, run_opencompass
    try:      # the shipped subsets hold a few items of every dataset: enough for this check, no download
        _oc_data.plan_data(None, tasks=[TASK_OF_CONFIG[OC_DATASET]], limit=OC_LIMIT)
    except ValueError as err:
        return {"ok": None, "detail": f"skipped: no OpenCompass data here ({err})"}
    with tempfile.TemporaryDirectory(prefix="edgeprune-submit-oc-") as work:
        result = run_opencompass(folder / "hf", datasets=(OC_DATASET,), limit=OC_LIMIT, max_out_len=OC_MAX_OUT,
                                 work_dir=work, device="auto")
    loaded = Path(result["model_dir"]) == (folder / "hf").resolve()
    return {"ok": loaded and not result["errors"], "detail": f"{result['model_class']} loaded {result['model_dir']} "
            f"(trust_remote_code={result['trust_remote_code']}), {OC_DATASET} limit {OC_LIMIT}: "
            f"scores {result['scores']}", "seconds": result["seconds"]}


def _guard(fn, *args) -> dict:
    try:
        return fn(*args)
    except Exception as err:  # noqa: BLE001 - a failed check is a result, with its reason
        return {"ok": False, "detail": f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}",
                "traceback": traceback.format_exc()[-2000:]}


def main(out: str) -> int:
    from compress._atomic import write_json
    bundle = Path(out)
    facts = json.loads((bundle / "submission.json").read_text())
    results = {}
    for cand in facts["candidates"]:
        folder = bundle / cand["folder"]
        checks = {"files": _guard(check_files, folder, cand), "transformers": _guard(check_transformers, folder, cand)}
        checks["llama.cpp"] = _guard(check_llama_cpp, folder, cand, checks["transformers"].get("top_token"))
        checks["opencompass"] = _guard(check_opencompass, folder)
        results[cand["folder"]] = checks
    ok = all(c["ok"] is not False for checks in results.values() for c in checks.values())
    write_json(bundle / "check.json", {"ok": ok, "candidates": results})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
