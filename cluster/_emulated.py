"""The `emulated` backend: llama.cpp (llama-cpp-python) on this host, in a child process under a
memory cap, with speeds projected to the phone.

Memory cap: the profile's budget on top of the child's own footprint (interpreter + llama.cpp library,
measured in the child after its imports), so the cap bounds what the model itself may use. cgroup v2
(memory.max, swap off) when this process's cgroup may have children with the memory controller
(not testable on this cgroup-v1 host); else RLIMIT_AS: virtual address space, which also counts thread
stacks and malloc arenas, so an allowance covers those and the model's resident growth is checked
against the budget afterwards. A run that fails under the cap is reported as "does not fit", not raised.

Speed: with one llama.cpp thread (the default on 2 cores) prefill and decode are timed by that thread's CPU
time, what a core of its own would take (a shared host's wall clock also counts waits for other processes);
with more threads by the wall clock; the median over repetitions.

Memory reported: the growth of the child's anonymous memory while loading and running plus the model file's
resident pages (see _emulated_child: the whole resident set also counts code and data files, which differ
between environments), plus llama.cpp's own
buffer sizes (weights, KV cache, compute, output) parsed from its log, the figures the memory model
predicts. Projection: decode is bandwidth-bound, so phone tok/s = host tok/s x phone bandwidth / host
bandwidth (numpy copy benchmark); prefill is compute-bound: x phone FLOP/s / host FLOP/s (numpy
matmul); both host rates are measured in the child, by the clock and threads that time the runs. Host numbers
stay in `raw`. Real numbers need the adb backend and a phone.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from objectives._provenance import MEASURED_EMULATED

from ._devices import (BACKENDS, DEFAULT_GEN_TOKENS, DEFAULT_PROMPT_TOKENS, DEFAULT_REPETITIONS, DeviceBackend,
                       ValidationResult, check_run_args)

THREAD_ALLOWANCE_BYTES = 80 * 2**20   # RLIMIT_AS only: per-thread stack + malloc arena reservations
FIXED_ALLOWANCE_BYTES = 64 * 2**20    # ggml's thread pool, llama.cpp's small host buffers
CGROUP_SLACK_BYTES = 16 * 2**20       # cgroup only: interpreter allocations made after the move
DEFAULT_THREADS = max(1, min(4, (os.cpu_count() or 2) // 2))   # half the cores: llama.cpp threads spin-wait
DEFAULT_TIMEOUT_S = 600.0
CHILD_SCRIPT = Path(__file__).with_name("_emulated_child.py")   # standalone: imports only llama_cpp, numpy
MEMORY_ERRORS = ("alloc", "memory", "mmap", "bad_alloc", "failed to load model", "failed to create")
# llama.cpp log lines: "load_tensors: CPU_Mapped model buffer size = 0.24 MiB", "... KV buffer size = ..."
BUFFER_LINE = re.compile(r"(model|KV|compute|output) buffer size\s*=\s*([0-9.]+) MiB")


class EmulatedBackend(DeviceBackend):
    name = "emulated"
    kind = MEASURED_EMULATED

    def __init__(self, *, budget_bytes: int | None = None, phone_bandwidth: float | None = None,
                 phone_flops: float | None = None, context_length: int | None = None, batch: int | None = None,
                 threads: int = DEFAULT_THREADS, timeout_s: float = DEFAULT_TIMEOUT_S, cap: str = "auto",
                 allowance_bytes: int | None = None, flash_attention: bool = True):
        """budget_bytes: memory the model may use (None: no cap). phone_bandwidth (bytes/s) and
        phone_flops (FLOP/s): the phone's effective rates (None: host speed, unprojected).
        context_length / batch: KV cache size and prefill chunk llama.cpp allocates, as the memory
        model assumes (None: what the run needs); llama.cpp reserves its compute buffers for a whole chunk
        when the context is created, whatever the prompt's length. cap: auto | cgroup | rlimit. allowance_bytes:
        RLIMIT_AS headroom for stacks and arenas (None: a default per thread). flash_attention: llama.cpp's
        flash attention (off: attention scores materialised, V cache padded to the widest layer)."""
        if cap not in ("auto", "cgroup", "rlimit"):
            raise ValueError(f"cap must be auto, cgroup or rlimit, got {cap!r}")
        if budget_bytes is not None and budget_bytes <= 0:
            raise ValueError(f"budget_bytes must be positive, got {budget_bytes}")
        if not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        self.budget_bytes, self.phone_bandwidth, self.phone_flops = budget_bytes, phone_bandwidth, phone_flops
        self.threads, self.timeout_s, self.cap = threads, timeout_s, cap
        self.context_length, self.batch, self.flash_attention = context_length, batch, bool(flash_attention)
        self.allowance_bytes = (FIXED_ALLOWANCE_BYTES + THREAD_ALLOWANCE_BYTES * (threads + 1)
                                if allowance_bytes is None else allowance_bytes)

    @classmethod
    def from_profile(cls, profile, **options) -> "EmulatedBackend":
        """Budget, rates, context and prefill chunk from an objectives DeviceProfile."""
        settings = {"budget_bytes": int(profile.memory_budget_bytes),
                    "phone_bandwidth": float(profile.decode_bandwidth_bytes_per_s),
                    "phone_flops": float(profile.compute_flops_per_s),
                    "context_length": int(profile.context_length), "batch": int(profile.prefill_chunk),
                    "flash_attention": bool(profile.flash_attention)}
        return cls(**{**settings, **options})

    def run(self, gguf_path, *, prompt_tokens: int = DEFAULT_PROMPT_TOKENS, gen_tokens: int = DEFAULT_GEN_TOKENS,
            repetitions: int = DEFAULT_REPETITIONS) -> ValidationResult:
        gguf_path = check_run_args(gguf_path, prompt_tokens, gen_tokens, repetitions)
        method = self._cap_method()
        cgroup = _make_cgroup() if method == "cgroup" else None
        spec = {"model": str(gguf_path.resolve()), "prompt": prompt_tokens, "gen": gen_tokens, "reps": repetitions,
                "threads": self.threads, "budget": self.budget_bytes, "method": method,
                "n_ctx": max(self.context_length or 0, prompt_tokens + gen_tokens + 8),
                "n_batch": self.batch or prompt_tokens, "flash_attn": self.flash_attention,
                "cgroup": str(cgroup) if cgroup else None, "allowance": self.allowance_bytes,
                "cgroup_limit": (self.budget_bytes or 0) + CGROUP_SLACK_BYTES}
        try:
            rc, out, err = _run_child(spec, self.timeout_s)
        finally:
            if cgroup is not None:
                _remove_cgroup(cgroup)
        return self._result(spec, rc, out, err)

    def _cap_method(self) -> str | None:
        if self.budget_bytes is None:
            return None
        writable = _cgroup_parent() is not None
        if self.cap == "cgroup" and not writable:
            raise ValueError("cgroup v2 memory cap requested but this process's cgroup is not writable")
        return "cgroup" if writable and self.cap != "rlimit" else "rlimit"

    def _result(self, spec: dict, rc: int, out: str, err: str) -> ValidationResult:
        data = _last_json(out)
        cap_note = (f"memory cap: {spec['method']}, budget {self.budget_bytes} B over the runtime's own footprint"
                    if spec["method"] else "no memory cap (no budget given)")
        buffers = llama_buffers(err)
        if rc != 0 or data is None or "error" in data:
            # an allocation that fails inside ggml aborts (GGML_ASSERT) a line or two after saying why
            detail = (data or {}).get("error") or _tail(err, 3) or f"exit {rc}"
            memory_failure = rc in (-9, 137) or any(m in detail.lower() for m in MEMORY_ERRORS)
            if not spec["method"] or not memory_failure:
                raise ValueError(f"emulated run of {spec['model']} failed: {detail}")
            return ValidationResult(backend=self.name, decode_tokens_per_s=None, prefill_tokens_per_s=None,
                                    peak_memory_bytes=None, fits=False, notes=[f"does not fit: {detail}", cap_note],
                                    raw={"rc": rc, "cap": spec, "llama_buffers": buffers})
        # what the model run allocates, not the code and data files the environment touches (_emulated_child)
        model_bytes = data["anon_growth_bytes"] + data["model_file_resident_bytes"]
        fits = self.budget_bytes is None or model_bytes <= self.budget_bytes
        decode_ratio = self.phone_bandwidth / data["host_bandwidth_bytes_per_s"] if self.phone_bandwidth else 1.0
        prefill_ratio = self.phone_flops / data["host_flops_per_s"] if self.phone_flops else 1.0
        notes = [cap_note, f"peak memory = anonymous memory growth while loading and running "
                           f"({data['anon_growth_bytes']} B) + the model file's resident pages "
                           f"({data['model_file_resident_bytes']} B); the whole process peaked at "
                           f"{data['peak_rss_bytes']} B with {data['baseline_rss_bytes']} B before loading, "
                           f"{data['other_file_pages_bytes']} B of code and data files touched on the way",
                 "llama.cpp buffers: " + ", ".join(f"{k} {v} B" for k, v in buffers.items())]
        notes.append(f"timed by {data.get('clock', 'wall clock')} ({self.threads} llama.cpp thread(s)), median of "
                     f"{len(data['decode_samples'])} run(s)")
        if self.phone_bandwidth or self.phone_flops:
            notes.append(f"projected to the phone: decode x{decode_ratio:.3g} (bandwidth), "
                         f"prefill x{prefill_ratio:.3g} (FLOP/s); host values in raw")
        if not fits:
            notes.insert(0, f"does not fit: the model took {model_bytes} B > budget {self.budget_bytes} B")
        raw = {**data, "model_rss_bytes": model_bytes, "llama_buffers": buffers,
               "llama_buffers_total_bytes": sum(buffers.values()),
               "decode_ratio": decode_ratio, "prefill_ratio": prefill_ratio, "cap": spec}
        return ValidationResult(backend=self.name, decode_tokens_per_s=data["decode_tokens_per_s"] * decode_ratio,
                                prefill_tokens_per_s=data["prefill_tokens_per_s"] * prefill_ratio,
                                peak_memory_bytes=model_bytes, fits=fits, notes=notes, raw=raw)


def llama_buffers(log: str) -> dict[str, int]:
    """{"model", "kv", "compute", "output"} bytes from llama.cpp's load log (summed over backends)."""
    sizes: dict[str, int] = {}
    for kind, mib in BUFFER_LINE.findall(log):
        key = kind.lower()
        sizes[key] = sizes.get(key, 0) + int(float(mib) * 2**20)
    return sizes


def host_bandwidth() -> float:
    """Bytes/s this process streams through memory (a large array copy, read + write), best of 5. The emulated
    runs measure it in their own process, next to the timed runs (_emulated_child.host_rates)."""
    from ._emulated_child import host_rates
    return host_rates()[0]


# ---- the child process -----------------------------------------------------------------------------
def _run_child(spec: dict, timeout_s: float) -> tuple[int, str, str]:
    """Start the child, wait with a timeout; (exit status, stdout, stderr). Negative status: signal."""
    env = {**os.environ, "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, str(CHILD_SCRIPT), json.dumps(spec)], stdout=out, stderr=err, env=env)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise ValueError(f"emulated run exceeded {timeout_s:.0f} s") from None
        out.seek(0)
        err.seek(0)
        return rc, out.read(), err.read()


# ---- cgroup v2 -------------------------------------------------------------------------------------
def _cgroup_parent() -> Path | None:
    """This process's own cgroup v2 directory when we may create children with a memory controller."""
    root = Path("/sys/fs/cgroup")
    if not (root / "cgroup.controllers").is_file():
        return None    # cgroup v1 or none
    try:
        line = next(x for x in Path("/proc/self/cgroup").read_text().splitlines() if x.startswith("0::"))
    except (StopIteration, OSError):
        return None
    parent = root / line[3:].lstrip("/")
    controls = (parent / "cgroup.subtree_control")
    if not os.access(parent, os.W_OK) or not controls.is_file() or "memory" not in controls.read_text().split():
        return None
    return parent


def _make_cgroup() -> Path:
    path = _cgroup_parent() / f"edgeprune-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    return path


def _remove_cgroup(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def _last_json(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    return None


def _tail(text: str, n: int = 1) -> str:
    lines = [x.strip() for x in text.strip().splitlines() if x.strip()]
    return " / ".join(lines[-n:])


BACKENDS.add("emulated", EmulatedBackend)
