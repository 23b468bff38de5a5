"""Device backends. The adb backend runs against a fake `adb` that executes the phone-side shell script
on this machine with a fake llama-bench printing a recorded llama-bench JSON (tests/cluster/data; the
format is llama-bench's, the numbers are illustrative): real numbers need a real phone."""
import json
import os
import stat
import sys
import time
from pathlib import Path

import pytest

import cluster
from cluster._adb import AdbBackend, AdbConfig, parse_status, result_from_bench

DATA = Path(__file__).parent / "data"
SAMPLE = DATA / "llama_bench_sample.json"

FAKE_ADB = """#!{python}
# Fake adb: logs argv, `push` copies locally, `shell` runs the command with the host's sh.
import json, os, shutil, subprocess, sys
args = sys.argv[1:]
with open(os.environ["FAKE_ADB_LOG"], "a") as f:
    f.write(json.dumps(args) + "\\n")
if args[:1] == ["-s"]:
    args = args[2:]
if args[0] == "push":
    shutil.copyfile(args[1], args[2])
    sys.exit(0)
if args[0] == "shell":
    sys.exit(subprocess.call(["sh", "-c", " ".join(args[1:])]))
sys.exit(1)
"""

FAKE_BENCH = """#!{python}
# Fake llama-bench: holds ~40 MB for a moment (VmHWM), then prints the recorded JSON for -p/-n.
import json, sys, time
args = sys.argv[1:]
if "--fail" in open({sample!r} + ".mode").read():
    print("ggml_aligned_malloc: insufficient memory (attempted to allocate 2048.00 MB)", file=sys.stderr)
    sys.exit(1)
ballast = bytearray(40 * 2**20)
for i in range(0, len(ballast), 4096):
    ballast[i] = 1
time.sleep(0.6)
tests = json.load(open({sample!r}))
tests[0]["n_prompt"] = int(args[args.index("-p") + 1])
tests[1]["n_gen"] = int(args[args.index("-n") + 1])
print(json.dumps(tests, indent=2))
"""


def _executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def fake_phone(tmp_path, monkeypatch):
    bindir, host_bin, phone = tmp_path / "bin", tmp_path / "host_llama", tmp_path / "phone"
    for d in (bindir, host_bin, phone):
        d.mkdir()
    sample = tmp_path / "sample.json"
    sample.write_text(SAMPLE.read_text())
    (tmp_path / "sample.json.mode").write_text("ok")
    _executable(bindir / "adb", FAKE_ADB.format(python=sys.executable))
    _executable(host_bin / "llama-bench", FAKE_BENCH.format(python=sys.executable, sample=str(sample)))
    (host_bin / "libllama.so").write_bytes(b"\0")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ADB_LOG", str(tmp_path / "adb.log"))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    return {"host_bin": host_bin, "phone": phone, "gguf": gguf, "log": tmp_path / "adb.log",
            "mode": tmp_path / "sample.json.mode"}


def _calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_adb_commands_are_built_from_the_config(tmp_path):
    (tmp_path / "llama-bench").write_text("")
    (tmp_path / "libggml.so").write_text("")
    backend = AdbBackend(config=AdbConfig(serial="R5CX", remote_dir="/data/local/tmp/ep", host_bin_dir=str(tmp_path),
                                          threads=4))
    cmds = backend.push_commands(Path("/x/rank1.gguf"))
    assert cmds[0] == ["adb", "-s", "R5CX", "shell", "mkdir -p /data/local/tmp/ep /data/local/tmp/ep/bin"]
    assert cmds[1] == ["adb", "-s", "R5CX", "push", "/x/rank1.gguf", "/data/local/tmp/ep/rank1.gguf"]
    assert ["adb", "-s", "R5CX", "push", str(tmp_path / "libggml.so"), "/data/local/tmp/ep/bin/libggml.so"] in cmds
    args = backend.bench_args("/data/local/tmp/ep/rank1.gguf", prompt_tokens=128, gen_tokens=64, repetitions=5)
    assert args == ["/data/local/tmp/ep/bin/llama-bench", "-m", "/data/local/tmp/ep/rank1.gguf", "-p", "128",
                    "-n", "64", "-r", "5", "-fa", "1", "-o", "json", "-t", "4"]
    no_fa = AdbBackend(config=AdbConfig(device_bin_dir="/x", flash_attention=False))
    assert no_fa.bench_args("m.gguf", prompt_tokens=8, gen_tokens=8, repetitions=1)[9:11] == ["-fa", "0"]
    script = backend.run_script(args)
    assert "VmHWM" in script and "/proc/$pid/status" in script and "EDGEPRUNE_RC=$rc" in script
    with pytest.raises(ValueError, match="exactly one of"):
        AdbConfig()
    with pytest.raises(ValueError, match="no llama-bench"):
        AdbConfig(host_bin_dir=str(tmp_path / "missing"))


def test_llama_bench_json_is_parsed():
    tests = json.loads(SAMPLE.read_text())
    result = result_from_bench(tests, peak_memory_bytes=5 * 2**20, budget_bytes=4 * 2**20)
    assert result.prefill_tokens_per_s == pytest.approx(tests[0]["avg_ts"])
    assert result.decode_tokens_per_s == pytest.approx(tests[1]["avg_ts"])
    assert result.fits is False and "does not fit" in result.notes[-1]
    assert parse_status("noise\nEDGEPRUNE_VMHWM_KB=2048\nEDGEPRUNE_RC=0\n") == {"rc": 0, "peak_memory_bytes": 2 * 2**20}
    with pytest.raises(ValueError, match="no status line"):
        parse_status("adb: device offline")


def test_adb_backend_end_to_end_with_a_fake_adb(fake_phone):
    backend = cluster.get_backend("adb", serial="emulator-5554", remote_dir=str(fake_phone["phone"]),
                                  host_bin_dir=str(fake_phone["host_bin"]), budget_bytes=2**30)
    result = backend.run(fake_phone["gguf"], prompt_tokens=16, gen_tokens=8, repetitions=2)
    assert result.backend == "adb" and result.fits
    assert result.decode_tokens_per_s > 0 and result.prefill_tokens_per_s > 0
    assert [t["n_prompt"] for t in result.raw["tests"]] == [16, 0]
    assert 40 * 2**20 < result.peak_memory_bytes < 2**30       # VmHWM sampled from the fake bench process
    calls = _calls(fake_phone["log"])
    assert all(c[:2] == ["-s", "emulator-5554"] for c in calls)
    assert (fake_phone["phone"] / "model.gguf").is_file() and (fake_phone["phone"] / "bin" / "llama-bench").is_file()

    fake_phone["mode"].write_text("--fail")                     # llama-bench runs out of memory on the phone
    result = backend.run(fake_phone["gguf"], prompt_tokens=16, gen_tokens=8, repetitions=2)
    assert result.fits is False and result.notes[0].startswith("does not fit")


def test_ray_task_options_ask_for_a_phone():
    assert cluster.task_options("adb") == {"num_cpus": 1, "resources": {"phone": 1}}
    assert cluster.task_options("emulated") == {"num_cpus": 1}
    with pytest.raises(ValueError, match="did you mean 'adb'"):
        cluster.get_backend("abd")


@pytest.mark.slow
def test_validate_on_ray_with_a_phone_resource(fake_phone):
    """A local Ray 'cluster' whose only node advertises a phone; the adb task is scheduled on it (a Ray worker
    process runs the backend against the fake phone) and its result comes back. Runs in every suite: it is
    the only test of cluster.validate_on_cluster."""
    import ray
    ray.init(num_cpus=1, resources={"phone": 1}, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PATH": os.environ["PATH"], "FAKE_ADB_LOG": os.environ["FAKE_ADB_LOG"]}})
    try:
        options = {"remote_dir": str(fake_phone["phone"]), "host_bin_dir": str(fake_phone["host_bin"])}
        result = cluster.validate_on_cluster(fake_phone["gguf"], backend="adb", options=options,
                                             prompt_tokens=16, gen_tokens=8, repetitions=1)
    finally:
        ray.shutdown()
    assert result.fits and result.decode_tokens_per_s > 0 and result.peak_memory_bytes > 40 * 2**20
    calls = _calls(fake_phone["log"])           # the task pushed the model and ran llama-bench on the "phone"
    assert [c[0] for c in calls].count("push") >= 2 and any("llama-bench" in " ".join(c) for c in calls)


# ---- emulated ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stories_gguf(tmp_path_factory):
    pytest.importorskip("llama_cpp")
    from compress._export_gguf import export_gguf
    return export_gguf("stories260k", tmp_path_factory.mktemp("gguf") / "stories.gguf")


def test_emulated_backend_measures_the_bundled_model(stories_gguf):
    from objectives._profiles import get_profile
    backend = cluster.EmulatedBackend.from_profile(get_profile("phone-12gb"), threads=1)
    result = backend.run(stories_gguf, prompt_tokens=32, gen_tokens=16, repetitions=2)
    assert result.fits and result.decode_tokens_per_s > 0 and result.prefill_tokens_per_s > 0
    assert result.peak_memory_bytes > 0 and result.raw["peak_rss_bytes"] > result.peak_memory_bytes
    # the model's memory: anonymous growth (KV, compute, output buffers) + its mapped file; the code and data
    # files the process touched are reported apart
    raw = result.raw
    assert raw["other_file_pages_bytes"] > 0 and raw["model_file_resident_bytes"] > 0
    assert result.peak_memory_bytes == raw["anon_growth_bytes"] + raw["model_file_resident_bytes"]
    # the KV cache is cleared, so resident; the compute buffer is reserved for the profile's whole 512-token chunk
    # and a 32-token prompt touches only part of it
    assert raw["anon_growth_bytes"] >= raw["llama_buffers"]["kv"]
    assert result.raw["cap"]["method"] in ("rlimit", "cgroup") and result.raw["cap"]["n_ctx"] == 4096
    assert result.raw["llama_buffers"]["model"] >= 520_064          # the FP16 weights
    assert result.decode_tokens_per_s == pytest.approx(result.raw["decode_tokens_per_s"] * result.raw["decode_ratio"])
    # the profile's chunk is what llama.cpp reserves, whatever the prompt; the phone projection divides by the host
    # bandwidth measured in the child, by the clock that timed the runs
    assert raw["cap"]["n_batch"] == 512 and raw["cap"]["flash_attn"] is True
    assert raw["decode_ratio"] == pytest.approx(48e9 / raw["host_bandwidth_bytes_per_s"])


@pytest.mark.parametrize("flash_attention", [True, False])
def test_emulated_kv_cache_is_what_the_memory_model_allocates(flash_attention, tmp_path):
    """A per-layer pruned GGUF (KV heads 4 / 2 / 0 / 1 / 4 by layer): llama.cpp's KV buffer is the memory model's,
    per layer with flash attention, every layer's V padded to the widest without it (context 16384, so the
    buffers sit far above the log's 0.01 MiB rounding)."""
    pytest.importorskip("llama_cpp")
    import compress
    import objectives
    from compress import LayerPlan, Plan
    from compress._export_gguf import export_gguf
    from objectives._memory import kv_allocated_bytes
    model, tok = compress.load_model("stories260k")
    compress.prune(model, tok, Plan(layers=tuple(LayerPlan(attn_keep=a, mlp_keep=1.0) for a in (1, .5, 0, .25, 1))))
    compress.save_pruned(model, tok, tmp_path / "ckpt")
    gguf = export_gguf(tmp_path / "ckpt", tmp_path / "m.gguf")
    profile = objectives.DeviceProfile(**{**objectives.get_profile("stories260k-tiny").to_dict(), "context_length": 16384,
                                          "flash_attention": flash_attention})
    result = cluster.EmulatedBackend.from_profile(profile, threads=1).run(gguf, prompt_tokens=16, gen_tokens=2,
                                                                          repetitions=1)
    shapes = compress.shapes_from_config(compress.load_config(tmp_path / "ckpt"))
    modeled = kv_allocated_bytes(shapes, profile)
    assert abs(result.raw["llama_buffers"]["kv"] - modeled) <= 0.005 * 2**20, (result.raw["llama_buffers"], modeled)
    padded = kv_allocated_bytes(shapes, objectives.DeviceProfile(**{**profile.to_dict(), "flash_attention": False}))
    assert (modeled == padded) is not flash_attention               # without it: 5 layers x the widest V


def test_emulated_backend_reports_does_not_fit_under_a_tiny_cap(stories_gguf):
    backend = cluster.EmulatedBackend(budget_bytes=100_000, cap="rlimit", allowance_bytes=0, threads=1)
    result = backend.run(stories_gguf, prompt_tokens=16, gen_tokens=4, repetitions=1)
    assert result.fits is False and result.notes[0].startswith("does not fit")
    assert result.decode_tokens_per_s is None and "rlimit" in result.notes[1]
    with pytest.raises(ValueError, match="GGUF file not found"):
        backend.run(stories_gguf.with_name("missing.gguf"))
    from cluster._emulated import _cgroup_parent
    if _cgroup_parent() is None:            # cgroup v1 / read-only cgroups: asking for cgroup is an error
        with pytest.raises(ValueError, match="not writable"):
            cluster.EmulatedBackend(budget_bytes=1, cap="cgroup").run(stories_gguf)
