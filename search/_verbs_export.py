"""`python -m search export` and `python -m search validate`: deployable files and device checks.

    python -m search export --model DIR --format gguf|hf|mlc --out PATH [--force]
    python -m search validate --experiment NAME --top K --device emulated|adb [--root runs]
"""
from __future__ import annotations

import json
import sys

DEFAULT_ROOT = "runs"


# ---- export ----------------------------------------------------------------------------------------
def add_export_args(p):
    p.add_argument("--model", required=True, help="checkpoint directory (or a registry name, e.g. stories260k)")
    p.add_argument("--format", required=True, dest="fmt", metavar="FORMAT",
                   help="gguf (llama.cpp, F16), hf (FP16 HF directory) or mlc (HF directory + MLC commands)")
    p.add_argument("--out", required=True, help="output file (gguf) or directory (hf, mlc)")
    p.add_argument("--force", action="store_true", help="replace an existing output")


def run_export(args) -> int:
    from compress._export import FORMATS, export_model
    FORMATS.get(args.fmt)                       # a typo fails before anything loads, with a suggestion
    out = export_model(args.model, args.fmt, args.out, force=args.force)
    json.dump({"format": args.fmt, "out": str(out)}, sys.stdout)
    sys.stdout.write("\n")
    return 0


# ---- validate --------------------------------------------------------------------------------------
def add_validate_args(p):
    p.add_argument("--experiment", required=True, help="experiment name (a folder under --root)")
    p.add_argument("--top", type=int, default=3, help="validate the K best checkpoints (default 3)")
    p.add_argument("--device", default="emulated", help="emulated (llama.cpp on this host, capped) or adb (a phone)")
    p.add_argument("--root", default=DEFAULT_ROOT, help="folder holding experiments (default: runs)")
    p.add_argument("--profile", default=None, help="device profile (default: the experiment's)")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--gen-tokens", type=int, default=32)
    p.add_argument("--repetitions", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="llama.cpp threads")
    adb = p.add_argument_group("adb (a phone attached to this machine, or to a Ray node with --ray)")
    adb.add_argument("--serial", default=None, help="adb -s SERIAL (default: the only attached phone)")
    adb.add_argument("--remote-dir", default=None, help="working folder on the phone (default /data/local/tmp/edgeprune)")
    adb.add_argument("--host-bin-dir", default=None, help="host folder with an Android llama-bench (+ lib*.so) to push")
    adb.add_argument("--device-bin-dir", default=None, help="folder on the phone that already has llama-bench")
    adb.add_argument("--ray", action="store_true",
                     help="run through Ray: adb runs go to a node started with --resources '{\"phone\": 1}'")
    adb.add_argument("--address", default=None, help="Ray address to join with --ray (default: local)")


def _backend_options(args) -> dict:
    if args.device == "adb":
        options = {k: v for k, v in (("serial", args.serial), ("remote_dir", args.remote_dir),
                                     ("host_bin_dir", args.host_bin_dir), ("device_bin_dir", args.device_bin_dir),
                                     ("threads", args.threads)) if v is not None}
        return options
    if args.device == "emulated":
        for flag in ("serial", "remote_dir", "host_bin_dir", "device_bin_dir"):
            if getattr(args, flag) is not None:
                raise ValueError(f"--{flag.replace('_', '-')} applies to --device adb only")
        return {"threads": args.threads} if args.threads else {}
    from cluster import BACKENDS
    BACKENDS.get(args.device)                    # unknown device: did-you-mean
    return {}


def run_validate(args) -> int:
    from cluster import validate_experiment
    from search._paths import ExperimentDir
    if args.top < 1:
        raise ValueError(f"--top must be >= 1, got {args.top}")
    options = _backend_options(args)
    paths = ExperimentDir.open(args.root, args.experiment)
    if args.ray and args.address:
        import ray
        ray.init(address=args.address, log_to_driver=False)
    record = validate_experiment(paths.path, top=args.top, device=args.device, profile=args.profile,
                                 backend_options=options, prompt_tokens=args.prompt_tokens,
                                 gen_tokens=args.gen_tokens, repetitions=args.repetitions, on_cluster=args.ray)
    print(f"{'rank':>4}  {'decode tok/s':>12}  {'(simulated)':>11}  {'peak MB':>9}  {'(simulated)':>11}  fits")
    for c in record["candidates"]:
        m, s = c["measured"], c["simulated"]
        print(f"{c['rank']:>4}  {_num(m['decode_tokens_per_s']):>12}  {_num(s['decode_tokens_per_s']):>11}  "
              f"{_num(m['peak_memory_bytes'], 1e6):>9}  {_num(s['peak_memory_bytes'], 1e6):>11}  "
              f"{'yes' if m['fits'] else 'NO'}")
    print(f"written: {paths.path / 'validation.json'}")
    return 0


def _num(value, scale: float = 1.0) -> str:
    return "n/a" if value is None else f"{value / scale:,.2f}"
