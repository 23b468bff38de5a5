"""Child process of the emulated backend: load one GGUF with llama-cpp-python under a memory cap and
time prefill and decode. Run as a script (not `-m cluster...`) so it imports only llama_cpp and numpy:
the runtime's own footprint stays small and is measured before the cap is set.

Input: one JSON argument (see EmulatedBackend.run). Output: one JSON line on stdout; on failure
{"error": ...} and exit status 1. A kill by the kernel (cgroup OOM) shows as a negative exit status.

Memory: what the model run allocates = the growth of this process's anonymous memory (RssAnon: KV cache,
compute and output buffers, logits, weights when not mapped), highest of the samples taken after loading and
after every prefill and decode run (llama.cpp reserves its buffers when the context is created), plus the
model file's resident pages (mapped weights). Not the growth of the whole resident set (VmHWM): that also
counts pages of llama.cpp's and Python's own code and data files first touched on the way, which are the
same for every model but not for every environment: measured on the same GGUF with the same package
versions, VmHWM growth less those file pages gave 5.26-5.29 MB in this checkout's venv and 4.80-4.82 MB in
a fresh clone's, the anonymous growth plus the model file 3.38-3.39 MB in both. Those other file pages are
reported apart (`other_file_pages_bytes`), with VmHWM.

Host rates: the memory bandwidth (a large array copy) and FLOP/s (a float32 matmul) the phone projection divides
by are measured here, in this process, right before the timed runs, with the clock and thread count
that time the runs (BLAS on one thread, as llama.cpp here). Measured in the parent instead, by the wall clock
with BLAS on every core, they followed the host's load: 6.7 GB/s there against 17 GB/s here at the same moment
on a busy 2-core host, which doubled every projected decode speed (SmolLM2-135M, where decode reads 270 MB a
token and the host's bandwidth, not a fixed per-token cost, sets its speed).
"""
import json
import os
import resource
import sys
import time
from pathlib import Path


def _child(spec: dict) -> dict:
    import llama_cpp   # imported before the cap is set: the runtime's own footprint is not the model's
    import numpy as np
    # before the baseline and the cap: the benchmark's arrays are neither the model's memory nor under its budget
    bandwidth, flops = host_rates(clock=time.thread_time if spec["threads"] == 1 else time.perf_counter)
    baseline, baseline_files, anon = _rss_peak(), _file_pages(), [_status_kb("RssAnon")]
    if spec["method"] == "rlimit":
        limit = _vm_size() + spec["budget"] + spec["allowance"]
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    elif spec["method"] == "cgroup":
        _enter_cgroup(Path(spec["cgroup"]), spec["cgroup_limit"])   # pages already resident stay charged elsewhere
    n_prompt, n_gen, reps = spec["prompt"], spec["gen"], spec["reps"]
    llm = llama_cpp.Llama(model_path=spec["model"], n_ctx=spec["n_ctx"], n_batch=spec["n_batch"],
                          n_ubatch=spec["n_batch"], n_threads=spec["threads"], n_threads_batch=spec["threads"],
                          flash_attn=bool(spec.get("flash_attn", True)),   # attention scores in tiles
                          verbose=True)   # its load log (stderr) carries the buffer sizes
    anon.append(_status_kb("RssAnon"))
    rng, n_vocab = np.random.default_rng(0), llm.n_vocab()
    prompt = [int(t) for t in rng.integers(3, llm.n_vocab(), n_prompt)]   # ids 0-2 are special
    # One llama.cpp thread computes on this thread, so its CPU time is the time a core of its own would take:
    # on a shared host the wall clock also counts the waits for other processes (measured here: wall-clock
    # decode varied 2x between repetitions under load, thread time by 10 %). Several threads: wall clock.
    clock = time.thread_time if spec["threads"] == 1 else time.perf_counter
    prefill, decode, wall = [], [], []
    for rep in range(reps + 1):                 # run 0 warms caches and is not counted, like llama-bench
        llm.reset()
        start = clock()
        llm.eval(prompt)
        mid, mid_wall = clock(), time.perf_counter()
        token = prompt[-1]
        for _ in range(n_gen):
            llm.eval([token])
            token = int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))))  # greedy
        end, end_wall = clock(), time.perf_counter()
        anon.append(_status_kb("RssAnon"))      # after the timed part: reading /proc costs time
        if rep:
            prefill.append(n_prompt / (mid - start))
            decode.append(n_gen / (end - mid))
            wall.append(n_gen / (end_wall - mid_wall))
    files = _file_pages()
    model_file = files.pop(spec["model"], 0)                  # spec["model"] is an absolute, resolved path
    other_files = sum(max(0, size - baseline_files.get(path, 0)) for path, size in files.items())
    # medians: one repetition slowed down by another process on a shared host does not move the result
    return {"prefill_tokens_per_s": float(np.median(prefill)), "decode_tokens_per_s": float(np.median(decode)),
            "prefill_samples": prefill, "decode_samples": decode, "decode_wall_clock_samples": wall,
            "clock": "thread CPU time" if spec["threads"] == 1 else "wall clock", "baseline_rss_bytes": baseline,
            "peak_rss_bytes": _rss_peak(), "anon_growth_bytes": max(anon) - anon[0],
            "model_file_resident_bytes": model_file, "other_file_pages_bytes": other_files, "threads": spec["threads"],
            "host_bandwidth_bytes_per_s": bandwidth, "host_flops_per_s": flops}


BANDWIDTH_BYTES = 64 * 2**20          # copy benchmark array size: far beyond any cache
MATMUL_SIZE = 512                     # float32 matmul benchmark (n x n)


def host_rates(*, clock=time.perf_counter, repeats: int = 5) -> tuple[float, float]:
    """(bytes/s streamed through memory by a large array copy, read + write; FLOP/s of a float32 matmul), best
    of `repeats` by `clock`."""
    import numpy as np
    src = np.ones(BANDWIDTH_BYTES // 8, dtype=np.float64)
    dst = np.empty_like(src)
    a = np.ones((MATMUL_SIZE, MATMUL_SIZE), dtype=np.float32)
    copy = matmul = float("inf")
    for _ in range(repeats):
        start = clock()
        np.copyto(dst, src)
        copy = min(copy, clock() - start)
        start = clock()
        a @ a
        matmul = min(matmul, clock() - start)
    return 2 * src.nbytes / max(copy, 1e-9), 2 * MATMUL_SIZE**3 / max(matmul, 1e-9)


def _rss_peak() -> int:
    """VmHWM, the peak resident set of this process image. Not getrusage's ru_maxrss: Linux carries
    that across fork + exec, so a child started by a 400 MB parent would report at least 400 MB."""
    return _status_kb("VmHWM")


def _file_pages() -> dict[str, int]:
    """Resident bytes of each file mapped into this process (/proc/self/smaps), by path."""
    pages, path = {}, None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and ":" not in fields[0]:      # a mapping's header: range perms offset dev inode [path]
            path = fields[5] if len(fields) >= 6 and fields[5].startswith("/") else None
        elif path and fields and fields[0] == "Rss:":
            pages[path] = pages.get(path, 0) + int(fields[1]) * 1024
    return pages


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"/proc/self/status has no {key}")


def _vm_size() -> int:
    return _status_kb("VmSize")


def _enter_cgroup(path: Path, limit: int) -> None:
    (path / "cgroup.procs").write_text(str(os.getpid()))
    (path / "memory.max").write_text(str(limit))
    if (path / "memory.swap.max").exists():
        (path / "memory.swap.max").write_text("0")   # over budget must fail, not swap


if __name__ == "__main__":
    try:
        print(json.dumps(_child(json.loads(sys.argv[1]))))
    except (MemoryError, ValueError, RuntimeError, OSError) as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}", "peak_rss_bytes": _rss_peak()}))
        sys.exit(1)
