"""`python -m search opencompass` (one model, full OpenCompass) and `python -m search full-eval` (a search's
top-k, with the proxy-vs-full Spearman correlation). Heavy imports happen inside each verb."""
from __future__ import annotations

import json
import sys

DEFAULT_ROOT = "runs"
DEFAULT_WORK_DIR = "opencompass_runs"


def _add_run_options(p):
    p.add_argument("--limit", type=int, default=None, help="first N items of every dataset (default: all)")
    p.add_argument("--max-out-len", type=int, default=None,
                   help="cap on generated tokens per item (default: each dataset config's own)")
    p.add_argument("--data-root", default=None,
                   help="benchmark data: an OpenCompass data folder (with data/) or raw files laid out like "
                        "shared/data (default: the subsets shipped in the package, enough for --limit 8)")
    p.add_argument("--download", action="store_true",
                   help="let OpenCompass download the full datasets into its cache (needs a network connection)")
    p.add_argument("--bbh-subsets", nargs="+", default=None, metavar="TASK",
                   help="only these BIG-Bench-Hard tasks, e.g. navigate word_sorting (default: all 27)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="cpu: float32, num_gpus=0; cuda: float16, num_gpus=1 (default: cuda when visible)")


def add_opencompass_args(p):
    p.add_argument("--model", required=True, help="registry name, HF id (in the local cache), directory or .gguf "
                                                  "file, as for every verb")
    p.add_argument("--datasets", nargs="+", default=None, metavar="CONFIG",
                   help="OpenCompass dataset configs (default: the competition's six: "
                        "commonsenseqa_7shot_cot_gen_734a22 FewCLUE_chid_gen humaneval_gen bbh_gen gsm8k_gen "
                        "truthfulqa_gen)")
    p.add_argument("--work-dir", default=DEFAULT_WORK_DIR,
                   help=f"outputs and data layout (default: {DEFAULT_WORK_DIR})")
    p.add_argument("--hf-type", default="auto", choices=["auto", "base", "chat"],
                   help="auto: chat when the tokenizer has a chat template, else base")
    _add_run_options(p)
    p.add_argument("--json", action="store_true", help="print the full result as JSON")


def _check_run_options(args) -> None:
    """--limit and --max-out-len bound the work: positive, never silently clamped."""
    for flag, value in (("--limit", args.limit), ("--max-out-len", args.max_out_len)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")


def run_opencompass_verb(args) -> int:
    from pathlib import Path
    import compress
    from objectives._opencompass import COMPETITION_DATASETS, run_opencompass
    _check_run_options(args)
    folder = compress.local_model_dir(args.model)   # the one resolver every verb uses (a name is not a path)
    compress.check_apart(args.work_dir, [folder, args.data_root], flag="--work-dir")
    abbr = None if Path(args.model).expanduser().is_dir() else Path(args.model).name
    result = run_opencompass(folder, abbr=abbr, datasets=args.datasets or COMPETITION_DATASETS, limit=args.limit,
                             work_dir=args.work_dir, data_root=args.data_root, max_out_len=args.max_out_len,
                             hf_type=args.hf_type, device=args.device, bbh_subsets=args.bbh_subsets,
                             download=args.download)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"{result['model_abbr']}: {result['model_class']} ({result['device']}, {result['dtype']}), "
          f"{result['seconds']} s, limit {result['limit'] or 'none'}, data: {result['data']}")
    for task, score in result["scores"].items():
        print(f"  {task:<16}{_fmt(score):>10}")
    print(f"  {'average':<16}{_fmt(result['average']):>10}")
    print(f"outputs: {result['output_dir']}")
    return 0


def add_full_eval_args(p):
    p.add_argument("--experiment", required=True)
    p.add_argument("--top", type=int, required=True, metavar="K", help="evaluate the K best candidates")
    p.add_argument("--root", default=DEFAULT_ROOT, help=f"folder holding the experiments (default: {DEFAULT_ROOT})")
    _add_run_options(p)


def run_full_eval(args) -> int:
    from objectives._oc_report import full_eval_top
    from search._record import ExperimentRecord
    _check_run_options(args)
    experiment = ExperimentRecord.open(args.root, args.experiment)
    experiment.check_top(args.top)                     # --top above the candidates there are: one line
    report = full_eval_top(experiment, args.top, limit=args.limit, data_root=args.data_root,
                           max_out_len=args.max_out_len, bbh_subsets=args.bbh_subsets, device=args.device,
                           download=args.download)
    print(f"wrote {experiment.opencompass_json} and {experiment.opencompass_csv}")
    failed = [c for c in report["candidates"] if c["error"]]
    return 1 if failed and len(failed) == len(report["candidates"]) else 0


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"
