"""`python -m search export` and `python -m search validate`: deployable files and device checks.

    python -m search export --model DIR --format gguf|hf|mlc --out PATH [--force]
    python -m search validate --experiment NAME --top K --device emulated|adb [--root runs]
"""
from __future__ import annotations

import json
import sys

DEFAULT_ROOT = "runs"
DEFAULT_TOP = 3


# ---- export ----------------------------------------------------------------------------------------
def add_export_args(p):
    p.add_argument("--model", required=True, help="checkpoint directory, registry name (e.g. stories260k), HF id or .gguf file")
    p.add_argument("--format", required=True, dest="fmt", metavar="FORMAT",
                   help="gguf (llama.cpp, F16), hf (FP16 HF directory) or mlc (HF directory + MLC commands)")
    p.add_argument("--out", required=True, help="output file (gguf) or directory (hf, mlc)")
    p.add_argument("--force", action="store_true", help="replace an existing output")


def run_export(args) -> int:
    import compress
    from compress._export import FORMATS, export_model
    FORMATS.get(args.fmt)                       # a typo fails before anything loads, with a suggestion
    compress.check_parent(args.out)
    compress.check_apart(args.out, [compress.resolve_model(args.model)])   # never write into (or over) the model
    out = export_model(args.model, args.fmt, args.out, force=args.force)
    json.dump({"format": args.fmt, "out": str(out)}, sys.stdout)
    sys.stdout.write("\n")
    return 0


# ---- validate --------------------------------------------------------------------------------------
def add_validate_args(p):
    p.add_argument("--experiment", required=True, help="experiment name (a folder under --root)")
    p.add_argument("--top", type=int, default=None, help="validate the K best checkpoints (default: 3, or fewer when "
                                                          "the search kept fewer)")
    p.add_argument("--device", default="emulated", help="emulated (llama.cpp on this host, capped) or adb (a phone)")
    p.add_argument("--root", default=DEFAULT_ROOT, help="folder holding experiments (default: runs)")
    p.add_argument("--profile", default=None, help="device profile name or profile file (default: the experiment's)")
    p.add_argument("--calibrate", default=None, metavar="FILE.json",
                   help="fit llama.cpp's fixed memory and per-token cost (and bandwidth) from these measurements and "
                        "write them into this profile file (created from the profile used, else updated), with the "
                        "measurements; use it as --device FILE.json at launch")
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
        return {"threads": args.threads} if args.threads is not None else {}
    from cluster import BACKENDS
    BACKENDS.get(args.device)                    # unknown device: did-you-mean
    return {}


def run_validate(args) -> int:
    from cluster import validate_experiment
    from search._record import ExperimentRecord
    if args.top is not None and args.top < 1:
        raise ValueError(f"--top must be >= 1, got {args.top}")
    for flag, value, most in (("--prompt-tokens", args.prompt_tokens, 2**16), ("--gen-tokens", args.gen_tokens, 2**16),
                              ("--repetitions", args.repetitions, 1000), ("--threads", args.threads, 4096)):
        if value is not None and not 1 <= value <= most:
            raise ValueError(f"{flag} must be 1..{most}, got {value}")
    options = _backend_options(args)
    experiment = ExperimentRecord.open(args.root, args.experiment)
    if args.top is None:                               # the default: the 3 best, or all there are
        args.top = min(DEFAULT_TOP, len(experiment.check_top(1)))
    experiment.check_top(args.top)                     # --top above the candidates there are: one line
    if args.calibrate is not None:
        import compress
        compress.check_parent(args.calibrate, flag="--calibrate")
    if args.device == "emulated":
        from search._phone import ensure_llama_cpp
        ensure_llama_cpp("validate", why="the emulated phone runs each candidate's GGUF with llama.cpp on this host")
    if args.ray and args.address:
        from cluster import start_ray
        start_ray(args.address, worker_env={})
    record = validate_experiment(experiment, top=args.top, device=args.device, profile=args.profile,
                                 backend_options=options, prompt_tokens=args.prompt_tokens,
                                 gen_tokens=args.gen_tokens, repetitions=args.repetitions, on_cluster=args.ray,
                                 calibrate=args.calibrate)
    kind = record["kind"]
    print(f"{'':5}{'decode tok/s':>28}{'peak memory MB':>30}")
    print(f"{'rank':<5}{kind:>18}{'simulated':>10}{kind:>20}{'simulated':>10}  fits ({kind} / simulated)")
    for c in record["candidates"]:
        m, s = c["measured"], c["simulated"]
        print(f"{c['rank']:<5}{_num(m['decode_tokens_per_s']):>18}{_num(s['decode_tokens_per_s']):>10}"
              f"{_num(m['peak_memory_bytes'], 1e6):>20}{_num(s['peak_memory_bytes'], 1e6):>10}  "
              f"{'yes' if m['fits'] else 'NO'} / {'yes' if s['fits'] else 'NO'}")
    if record.get("calibration"):
        cal = record["calibration"]["fitted"]
        print(f"calibrated {record['runtime']} in {record['calibration']['file']}: fixed memory "
              f"{cal['overhead_bytes']:,} B, {cal['token_overhead_s'] * 1e6:.1f} us per token, bandwidth "
              f"{cal['decode_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s ({cal['method']})")
    print(f"written: {experiment.validation_file(args.device)}")
    return 0


def _num(value, scale: float = 1.0) -> str:
    return "n/a" if value is None else f"{value / scale:,.2f}"


# ---- submit ----------------------------------------------------------------------------------------
def add_submit_args(p):
    p.add_argument("--experiment", required=True, help="experiment name (a folder under --root)")
    p.add_argument("--top", type=int, default=1, metavar="K", help="bundle the K best candidates (default 1)")
    p.add_argument("--out", required=True, help="the bundle folder (must not exist or be empty)")
    p.add_argument("--root", default=DEFAULT_ROOT, help="folder holding experiments (default: runs)")
    p.add_argument("--no-check", action="store_true", help="skip the checks of the written bundle")


def run_submit(args) -> int:
    from search._record import ExperimentRecord
    from search._submit import submit
    record = ExperimentRecord.open(args.root, args.experiment)
    if not args.no_check:
        from search._phone import ensure_llama_cpp
        ensure_llama_cpp("submit", why="its checks load each candidate's GGUF with llama.cpp")
    facts = submit(record, top=args.top, out=args.out, check=not args.no_check)
    check = facts.get("check")
    if check is not None and not check["ok"]:
        print(f"error: the bundle in {args.out} failed its checks (see {args.out}/check.json)", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {len(facts['candidates'])} candidate(s), results.csv, README.md"
          + (", checks passed" if check else ", not checked"))
    return 0
