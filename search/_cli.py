"""`python -m search VERB ...`: the command line. Bad input -> one line on stderr, exit status 2."""
from __future__ import annotations

import argparse
import difflib
import os
import re
import sys

from search import _verbs, _verbs_export, _verbs_opencompass

# Each verb: (help, function adding its arguments, function running it).
VERBS = {
    "launch": ("run a compression search (the main job)", _verbs.add_launch_args, _verbs.launch),
    "resume": ("continue an interrupted search, keeping completed trials", _verbs.add_resume_args, _verbs.resume),
    "top": ("best candidates of a search, with plans and scores", _verbs.add_top_args, _verbs.top),
    "prune": ("apply one pruning plan to a model", _verbs.add_prune_args, _verbs.prune),
    "evaluate": ("score a model: proxy accuracy, KL, memory, throughput", _verbs.add_evaluate_args, _verbs.evaluate),
    "distill": ("recover a pruned model by distillation from its dense teacher", _verbs.add_distill_args, _verbs.distill),
    "export": ("export a model as GGUF (llama.cpp), FP16 HF or MLC-ready", _verbs_export.add_export_args,
               _verbs_export.run_export),
    "validate": ("export a search's top candidates and run them on a phone (adb) or an emulated phone",
                 _verbs_export.add_validate_args, _verbs_export.run_validate),
    "opencompass": ("full OpenCompass evaluation of one model (the competition's datasets)",
                    _verbs_opencompass.add_opencompass_args, _verbs_opencompass.run_opencompass_verb),
    "full-eval": ("OpenCompass on a search's top-k and the proxy-vs-full rank correlation",
                  _verbs_opencompass.add_full_eval_args, _verbs_opencompass.run_full_eval),
}


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's error contract: one `error: ...` line (with a did-you-mean for a mistyped
    choice), exit status 2, never the usage text; no prefix matching (`--track` is not `--tracking-uri`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message):
        match = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if match:
            choices = re.findall(r"'([^']*)'", match.group(2)) or [c.strip() for c in match.group(2).split(",")]
            close = difflib.get_close_matches(match.group(1), choices, n=1)
            if close:
                message += f"; did you mean {close[0]!r}?"
        command = " ".join(self.prog.split()[3:])       # "python -m search launch" -> "launch"
        print(f"error: {command + ': ' if command else ''}{message}", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m search", description=__doc__)
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB", parser_class=_Parser)
    for name, (help_text, add_args, run) in VERBS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(run=run)
    return parser


def _quiet_cpu_deepspeed() -> None:
    """transformers imports deepspeed when installed; on a CPU box it prints an accelerator warning
    to stdout (breaking `--json` output) unless told the accelerator up front."""
    import torch
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # per-tensor "Loading weights" bars drown the verbs' own output


class OneLineError(Exception):
    """Raised for user errors; printed as one line."""


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    _quiet_cpu_deepspeed()
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError, OneLineError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
