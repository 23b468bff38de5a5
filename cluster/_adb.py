"""The `adb` backend: llama.cpp's `llama-bench` on a phone attached over adb.

Steps: push the GGUF (and, when given on the host, the Android llama-bench build with its shared
libraries), run `llama-bench -m ... -p N -n M -r R -o json` in the background on the phone while a
shell loop samples VmHWM (the peak resident set) from /proc/<pid>/status, then read the JSON back.
Real numbers need a real phone (arm64 llama-bench, e.g. built with the NDK per llama.cpp's
docs/android.md); the tests here drive a fake `adb` script with a recorded llama-bench output.
"""
from __future__ import annotations

import json
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from objectives._provenance import MEASURED_PHONE

from ._devices import (BACKENDS, DEFAULT_GEN_TOKENS, DEFAULT_PROMPT_TOKENS, DEFAULT_REPETITIONS, DeviceBackend,
                       ValidationResult, check_run_args)

DEFAULT_REMOTE_DIR = "/data/local/tmp/edgeprune"
BENCH_BINARY = "llama-bench"
SAMPLE_INTERVAL_S = 0.2          # VmHWM is a high-water mark, so sampling only has to catch the end
MARKER = "EDGEPRUNE"             # prefixes the script's own output lines, so they parse unambiguously


@dataclass(frozen=True, kw_only=True)
class AdbConfig:
    serial: str | None = None             # adb -s SERIAL; None: the only attached device
    remote_dir: str = DEFAULT_REMOTE_DIR  # working directory on the phone
    host_bin_dir: str | None = None       # host folder with an Android llama-bench (+ lib*.so) to push
    device_bin_dir: str | None = None     # or: where llama-bench already is on the phone
    adb: str = "adb"
    threads: int | None = None            # llama-bench -t; None: its default
    budget_bytes: int | None = None       # peak memory above this -> fits=False
    flash_attention: bool = True          # llama-bench -fa (the profile's flash_attention)
    timeout_s: float = 1800.0

    def __post_init__(self):
        if (self.host_bin_dir is None) == (self.device_bin_dir is None):
            raise ValueError("adb backend: give exactly one of host_bin_dir (push llama-bench from this machine) "
                             "or device_bin_dir (llama-bench already on the phone)")
        if self.host_bin_dir is not None and not (Path(self.host_bin_dir) / BENCH_BINARY).is_file():
            raise ValueError(f"adb backend: no {BENCH_BINARY} in {self.host_bin_dir}")


class AdbBackend(DeviceBackend):
    name = "adb"
    kind = MEASURED_PHONE

    def __init__(self, *, config: AdbConfig | None = None, **options):
        self.config = config or AdbConfig(**options)

    # ---- commands (pure, unit-tested) -------------------------------------------------------------
    def adb_prefix(self) -> list[str]:
        return [self.config.adb] + (["-s", self.config.serial] if self.config.serial else [])

    @property
    def bin_dir(self) -> str:
        return self.config.device_bin_dir or f"{self.config.remote_dir}/bin"

    def push_commands(self, gguf_path: Path) -> list[list[str]]:
        cfg, adb = self.config, self.adb_prefix()
        cmds = [adb + ["shell", f"mkdir -p {shlex.quote(cfg.remote_dir)} {shlex.quote(self.bin_dir)}"],
                adb + ["push", str(gguf_path), f"{cfg.remote_dir}/{gguf_path.name}"]]
        if cfg.host_bin_dir:
            files = [Path(cfg.host_bin_dir) / BENCH_BINARY] + sorted(Path(cfg.host_bin_dir).glob("*.so"))
            cmds += [adb + ["push", str(f), f"{self.bin_dir}/{f.name}"] for f in files]
            cmds.append(adb + ["shell", f"chmod 755 {shlex.quote(self.bin_dir + '/' + BENCH_BINARY)}"])
        return cmds

    def bench_args(self, remote_model: str, *, prompt_tokens: int, gen_tokens: int, repetitions: int) -> list[str]:
        args = [f"{self.bin_dir}/{BENCH_BINARY}", "-m", remote_model, "-p", str(prompt_tokens),
                "-n", str(gen_tokens), "-r", str(repetitions),
                "-fa", "1" if self.config.flash_attention else "0", "-o", "json"]   # as the profile models it
        if self.config.threads:
            args += ["-t", str(self.config.threads)]
        return args

    def run_script(self, bench_args: list[str]) -> str:
        """One `adb shell` script: llama-bench in the background, VmHWM sampled until it exits."""
        d = shlex.quote(self.config.remote_dir)
        lib = shlex.quote(self.bin_dir)
        bench = " ".join(shlex.quote(a) for a in bench_args)
        return (f"cd {d} && LD_LIBRARY_PATH={lib}:$LD_LIBRARY_PATH {bench} > bench.json 2> bench.err & "
                f"pid=$!; hwm=0; "
                f"while kill -0 $pid 2>/dev/null; do "
                f"v=$(grep VmHWM /proc/$pid/status 2>/dev/null | tr -s ' \\t' ' ' | cut -d' ' -f2); "
                f"[ -n \"$v\" ] && hwm=$v; sleep {SAMPLE_INTERVAL_S}; done; "
                f"wait $pid; rc=$?; echo {MARKER}_VMHWM_KB=$hwm; echo {MARKER}_RC=$rc")

    # ---- running --------------------------------------------------------------------------------
    def run(self, gguf_path, *, prompt_tokens: int = DEFAULT_PROMPT_TOKENS, gen_tokens: int = DEFAULT_GEN_TOKENS,
            repetitions: int = DEFAULT_REPETITIONS) -> ValidationResult:
        gguf_path = check_run_args(gguf_path, prompt_tokens, gen_tokens, repetitions)
        for cmd in self.push_commands(gguf_path):
            self._call(cmd)
        remote_model = f"{self.config.remote_dir}/{gguf_path.name}"
        args = self.bench_args(remote_model, prompt_tokens=prompt_tokens, gen_tokens=gen_tokens,
                               repetitions=repetitions)
        status = parse_status(self._call(self.adb_prefix() + ["shell", self.run_script(args)]))
        d = self.config.remote_dir
        if status["rc"] != 0:
            err = self._call(self.adb_prefix() + ["shell", f"cat {shlex.quote(d)}/bench.err"], check=False)
            return _failed(status, err)
        tests = json.loads(self._call(self.adb_prefix() + ["shell", f"cat {shlex.quote(d)}/bench.json"]))
        return result_from_bench(tests, peak_memory_bytes=status["peak_memory_bytes"],
                                 budget_bytes=self.config.budget_bytes)

    def _call(self, cmd: list[str], *, check: bool = True) -> str:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=self.config.timeout_s)
        except FileNotFoundError:
            raise ValueError(f"adb executable {self.config.adb!r} not found; install Android platform-tools") from None
        if check and proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise ValueError(f"{' '.join(cmd[:3])} ... failed (exit {proc.returncode}): "
                             f"{detail[-1] if detail else 'no output'}")
        return proc.stdout


def parse_status(output: str) -> dict:
    """The run script's own lines -> {"rc", "peak_memory_bytes"} (VmHWM is in kB)."""
    values = {}
    for line in output.splitlines():
        if line.startswith(f"{MARKER}_") and "=" in line:
            key, value = line[len(MARKER) + 1:].split("=", 1)
            values[key] = value.strip()
    if "RC" not in values:
        raise ValueError(f"adb run produced no status line; output was: {output.strip()[-200:]!r}")
    kb = int(values.get("VMHWM_KB") or 0)
    return {"rc": int(values["RC"]), "peak_memory_bytes": kb * 1024 if kb else None}


def result_from_bench(tests: list[dict], *, peak_memory_bytes: int | None, budget_bytes: int | None,
                      backend: str = "adb") -> ValidationResult:
    """llama-bench JSON (one object per test): prefill = the pp test (n_gen 0), decode = the tg test
    (n_prompt 0); avg_ts is tokens/s averaged over the repetitions."""
    if not isinstance(tests, list) or not tests:
        raise ValueError("llama-bench JSON must be a non-empty list of tests")
    prefill = next((t for t in tests if t.get("n_prompt", 0) > 0 and t.get("n_gen", 0) == 0), None)
    decode = next((t for t in tests if t.get("n_gen", 0) > 0 and t.get("n_prompt", 0) == 0), None)
    fits = budget_bytes is None or peak_memory_bytes is None or peak_memory_bytes <= budget_bytes
    notes = [f"llama-bench {tests[0].get('build_commit', '?')} on {tests[0].get('cpu_info', 'the phone')}"]
    if peak_memory_bytes is None:
        notes.append("VmHWM was not sampled (process ended before the first sample)")
    if not fits:
        notes.append(f"does not fit: peak {peak_memory_bytes} B > budget {budget_bytes} B")
    return ValidationResult(
        backend=backend, decode_tokens_per_s=float(decode["avg_ts"]) if decode else None,
        prefill_tokens_per_s=float(prefill["avg_ts"]) if prefill else None, peak_memory_bytes=peak_memory_bytes,
        fits=fits, notes=notes,
        raw={"tests": [{k: t.get(k) for k in ("n_prompt", "n_gen", "avg_ts", "stddev_ts", "avg_ns", "n_threads",
                                             "model_size", "model_n_params")} for t in tests]})


def _failed(status: dict, stderr: str) -> ValidationResult:
    """Out of memory is a result (the candidate does not fit this phone); any other failure is an error."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else f"exit {status['rc']}"
    # Android's low-memory killer ends the process with SIGKILL (exit 137); ggml reports failed allocations.
    oom = status["rc"] in (137, -9) or any("alloc" in line.lower() or "memory" in line.lower() for line in lines)
    if not oom:
        raise ValueError(f"llama-bench failed on the phone (exit {status['rc']}): {last}")
    return ValidationResult(backend="adb", decode_tokens_per_s=None, prefill_tokens_per_s=None,
                            peak_memory_bytes=status["peak_memory_bytes"], fits=False,
                            notes=[f"does not fit: {last}"], raw={"rc": status["rc"], "stderr_tail": lines[-5:]})


BACKENDS.add("adb", AdbBackend)
