"""`python -m search launch --track scratch`: Track 2, an architecture searched and trained from scratch.

    python -m search launch --track scratch [--size-gb X] [--tokens N] [--datasets c4 alpaca_zh] [--dtype D] ...

Without --config the experiment is experiments/scratch.yaml (competition scale) on a machine with a GPU,
else experiments/scratch-tiny.yaml (sub-million-parameter models on the bundled data, CPU). Everything is
validated before the experiment folder is created: bad input writes nothing.
"""
from __future__ import annotations

from pathlib import Path

SCRATCH_ONLY = {"size_gb": "--size-gb", "tokens": "--tokens", "datasets": "--datasets", "dtype": "--dtype"}


def default_config() -> Path:
    import torch
    import experiments
    return Path(experiments.__file__).parent / ("scratch.yaml" if torch.cuda.is_available() else "scratch-tiny.yaml")


def is_scratch(args) -> bool:
    """--track scratch, or a --config whose track is scratch. Track 2 flags on a Track 1 launch are refused."""
    scratch = args.track == "scratch"
    if not scratch and args.config and Path(args.config).is_file():
        from compress import read_yaml
        data = read_yaml(args.config, "experiment file")      # a syntax error or tabs: one line
        scratch = isinstance(data, dict) and data.get("track") == "scratch"
    if not scratch:
        for attr, flag in SCRATCH_ONLY.items():
            if getattr(args, attr) is not None:
                raise ValueError(f"{flag} applies to --track scratch (track 2) only")
    return scratch


def launch_scratch(args) -> int:
    import compress
    import experiments
    from search import _scratch_trial
    from search._record import ExperimentRecord
    from search._verbs import _free_name, _settings, launch_checked
    if args.model:
        raise ValueError("Track 2 trains from scratch: --model (a pre-trained model) is not allowed; "
                         "omit it, or use --track prune to compress a model")
    if args.distill:
        raise ValueError("Track 2 trains from scratch: distillation from a teacher (--distill) is not allowed")
    if args.size_gb is not None and args.budget_gb is not None and args.size_gb != args.budget_gb:
        raise ValueError("--size-gb and --budget-gb are the same budget; give one")
    for name in args.datasets or ():
        compress.check_source(name)
    if args.tokens is not None and args.tokens < 1:
        raise ValueError(f"--tokens must be a positive number of training tokens, got {args.tokens}")
    if args.size_gb is not None:
        compress.number(args.size_gb, "--size-gb", low=0, low_open=True, noun="a positive number of GiB",
                        show_range=False)
    config = Path(args.config) if args.config else default_config()
    if not args.config:
        print(f"track 2 experiment: {config.relative_to(config.parent.parent)}", flush=True)
    overrides = {"budget_gb": args.size_gb if args.size_gb is not None else args.budget_gb, "device": args.device,
                 "runtime": args.runtime, "dtype": args.dtype, "search.trials": args.trials,
                 "search.sampler": args.sampler, "search.mode": args.mode, "search.multi_objective": args.versus,
                 "search.workers": args.workers, "proxy.rungs": args.rungs,
                 "train.tokens": [args.tokens] if args.tokens else None, "train.datasets": args.datasets,
                 "proxy.unsafe_exec": True if args.unsafe_exec else None, **_settings(args.settings)}
    exp = experiments.load_experiment(model=None, config=str(config), overrides=overrides)
    if getattr(exp, "track", None) != "scratch":
        raise ValueError(f"{config} is not a track 2 experiment (it needs track: scratch)")
    root = Path(args.root)
    name = args.experiment if args.experiment is not None else _free_name(root, "scratch")
    if args.storage:     # its trials write tokenizers and checkpoints into the run directory (one node)
        raise ValueError("--storage is not supported by --track scratch yet: its trials keep tokenizers and "
                         "checkpoints in the run directory; run track 2 without --storage")
    storage = None
    record = ExperimentRecord.check_new(root, name, storage=storage)  # an existing experiment is refused
    _scratch_trial.build_setup(exp, record)                          # every check; nothing is written yet
    return launch_checked(exp, record, args, storage=storage)
