"""The organisers' README of a submission bundle, generated from submission.json's facts (nothing typed by hand:
every number below comes from the experiment record, each efficiency number with its kind)."""
from __future__ import annotations

from objectives._provenance import KINDS, preferred
from search._report import human_bytes


def readme(facts: dict) -> str:
    cands = facts["candidates"]
    lines = [f"# Submission: experiment `{facts['experiment']}`", "",
             f"{len(cands)} candidate{'s' if len(cands) != 1 else ''}, written {facts['created']} by "
             f"`python -m search submit`. FP16 weights (no quantization). Every efficiency number is labelled "
             f"by kind: `simulated` (the search's memory / speed models of device `{facts['profile']['name']}`), "
             "`measured-emulated` (llama.cpp on a host under the device's memory cap, speed projected to the phone) "
             "or `measured-phone` (llama-bench on a phone over adb).", "",
             "`results.csv` is the competition CSV (the starting kit's columns, rows in rank order) with two more "
             "columns saying which kind its Throughput and Memory-Usage are (measured where measured, else "
             "simulated). `check.json` holds the checks run on this folder after it was written.", "",
             "| rank | folder | parameters | proxy score | OpenCompass average | memory | decode tok/s |",
             "|---|---|---|---|---|---|---|"]
    for c in cands:
        memory, mkind = preferred(c["numbers"], "peak_memory_bytes")
        decode, dkind = preferred(c["numbers"], "decode_tokens_per_s")
        full = c["opencompass"]
        lines.append(f"| {c['rank']} | `{c['folder']}` | {c['parameters']:,} | {_f(c['proxy']['score'])} | "
                     f"{_f(full.get('average')) if full.get('ran') else 'not run'} | {human_bytes(memory)} ({mkind}) | "
                     f"{_rate(decode)} ({dkind}) |")
    for c in cands:
        lines += ["", *_candidate(c)]
    return "\n".join(lines) + "\n"


def _candidate(c: dict) -> list[str]:
    folder = c["folder"]
    lines = [f"## {folder}", "",
             f"Trial `{c['trial_id']}`{' (baseline ' + c['name'] + ')' if c['name'] != c['trial_id'] else ''}; "
             f"{c['parameters']:,} parameters; shapes {'uniform' if c['uniform'] else 'differ per layer'}.", "",
             "Load it for OpenCompass (or anything built on transformers):", "", "```python",
             "from transformers import AutoModelForCausalLM, AutoTokenizer",
             f"model = AutoModelForCausalLM.from_pretrained(\"{folder}/hf\", trust_remote_code=True, dtype=\"float16\")",
             f"tokenizer = AutoTokenizer.from_pretrained(\"{folder}/hf\")", "```", ""]
    if c["remote_code"]:
        lines += [f"Per-layer shapes need `{folder}/hf/modeling_pruned.py` (`auto_map` in config.json); its sha256 is "
                  "recorded in `hf/plan.json` and was checked when this bundle was written and checked.", ""]
    lines += ["llama.cpp (flash attention on, as measured):", "", "```sh",
              f"llama-cli -m {folder}/model-f16.gguf -fa on -p \"Once upon a time\" -n 64",
              f"llama-bench -m {folder}/model-f16.gguf -p 64 -n 32 -fa 1", "```", ""]
    if c["mlc"]["buildable"]:
        lines += [f"MLC-LLM (`{folder}/mlc/`, weights shared with `hf/`), run from `{folder}/`:", "", "```sh",
                  c["mlc"]["commands"].strip(), "```", ""]
    else:
        lines += [f"MLC-LLM: not buildable. {c['mlc']['reason']}", ""]
    proxy = c["proxy"]
    lines += [f"Proxy score {_f(proxy['score'])} (accuracy {_f(proxy['proxy_accuracy'])}, KL to the teacher "
              f"{_f(proxy['kl_to_teacher'])}), per task:", "", "| task | accuracy | items |", "|---|---|---|"]
    lines += [f"| {t} | {_f(v['accuracy'])} | {v['items'] if v['items'] is not None else '-'} |"
              for t, v in proxy["tasks"].items()]
    full = c["opencompass"]
    lines.append("")
    if full.get("ran"):
        limit = f"first {full['limit']} items of each dataset" if full.get("limit") else "full datasets"
        lines += [f"OpenCompass ({limit}): average {_f(full['average'])}", "", "| task | score | items |",
                  "|---|---|---|"]
        lines += [f"| {t} | {_f(s)} | {full['items'].get(t, '-')} |" for t, s in full["scores"].items()]
    else:
        lines.append(f"OpenCompass: not run ({full.get('error') or full.get('how')}).")
    lines += ["", "| number | " + " | ".join(KINDS) + " |", "|---|" + "---|" * len(KINDS)]
    for quantity, show in (("peak_memory_bytes", human_bytes), ("decode_tokens_per_s", _rate),
                           ("prefill_tokens_per_s", _rate)):
        cells = [show((c["numbers"].get(k) or {}).get(quantity)) if k in c["numbers"] else "not measured"
                 for k in KINDS]
        lines.append(f"| {quantity} | " + " | ".join(cells) + " |")
    lines += ["", "Simulated numbers are at the device's full context (the search's worst case); measured ones at "
              "the validation run's prompt and generation lengths (`numbers` in candidate.json has the simulation at "
              "that context too)."]
    return lines


def _f(v) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) else "-"


def _rate(v) -> str:
    return "-" if v is None else f"{v:,.0f}"
