"""Device profiles: the memory budget and the speed of the machine a candidate must run on.

A profile holds effective rates (what a real runtime achieves), not datasheet peaks, so the throughput
model is a plain division (see `_throughput`). Numbers and where they come from:

phone-12gb: a 12 GB Snapdragon 8 Gen 3 phone (OnePlus 12 class, LPDDR5X-4800: 64-bit bus at
9.6 GT/s = 76.8 GB/s peak). The calibration points are ExecuTorch's published BF16 baselines on a
OnePlus 12 (pytorch/executorch, examples/models/llama/README.md; XNNPACK + KleidiAI, CPU, prompt of
64 tokens):
    Llama-3.2-1B BF16: decode 19.2 tok/s, prefill 60.3 tok/s, RSS 3,185 MiB (program 2,358 MiB)
    Llama-3.2-3B BF16: decode 7.6 tok/s,  prefill 21.2 tok/s, RSS 7,419 MiB (program 6,129 MiB)
  * decode bandwidth: decode reads every weight once per token; 19.2 x 2.47 GB = 47.5 GB/s and
    7.6 x 6.43 GB = 48.8 GB/s, so 48 GB/s effective (62 % of the 76.8 GB/s peak). One number fits
    both sizes to 2 % (tests/objectives/test_throughput.py); it is fitted on them, not independent.
  * prefill compute: FLOPs per prompt token = 2 x non-embedding matmul params (1.95 G for 1B,
    5.64 G for 3B; the LM head runs on the last prompt token only) give 117 and 120 GFLOP/s, so
    1.2e11 FLOP/s effective. That is a CPU figure (about 1/5 of the big cores' FP16 NEON peak); a
    GPU / NPU runtime prefills faster, so prefill speed here is conservative.
  * runtime overhead: RSS minus the program above is 827 MiB (1B) and 1,290 MiB (3B) with a 128-token
    KV cache, i.e. runtime, allocator and packing buffers beyond weights; 1 GiB sits between the two.
    An Android app additionally shares the 12 GB with the OS; the budget is the competition's limit.
  * context 4096 and a prefill chunk of 512 tokens (llama.cpp's default n_ubatch).

stories260k-tiny: the bundled 260K-parameter model is so small that the phone budget never binds, so
this profile's budget is 70 % of the dense model's own modeled peak (derivation at the constant), with
no runtime overhead (1 GiB would dwarf a 1 MB model) and the phone's rates. Its 64-token prefill
chunk keeps the unprunable logits buffer from dominating a model this small.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from compress import Registry

GIB = 1024**3
DEFAULT_PROFILE = "phone-12gb"

# Phone rates (derivation in the module docstring).
PHONE_DECODE_BANDWIDTH = 48e9          # bytes/s, effective BF16/FP16 decode on Snapdragon 8 Gen 3
PHONE_PREFILL_FLOPS = 1.2e11           # FLOP/s, effective CPU prefill on the same phone
PHONE_OVERHEAD = 1 * GIB               # runtime + allocator beyond weights, KV and activations

# Dense stories260k (LlamaConfig hidden 64, 5 layers, 8 heads, 4 KV heads, head_dim 8, ffn 172,
# vocab 512, tied) in FP16 at context 512 with a 64-token prefill chunk (`_memory.estimate_memory`):
#   weights      260,032 params x 2                                   =   520,064
#   KV cache     5 layers x 2 (K,V) x 4 heads x 8 x 512 tokens x 2    =   327,680
#   activations  64 x 2 x (2 x 64 + max(8x8 + 2x4x8, 2 x 172))        =    60,416
#   logits       64 x 512 x 4 (FP32)                                  =   131,072
#   peak                                                              = 1,039,232 bytes
# Budget = 70 % of that, rounded down: the search must cut about 38 % of the prunable bytes.
STORIES_DENSE_PEAK = 1_039_232
STORIES_BUDGET_FRACTION = 0.7
STORIES_BUDGET = 727_462               # floor(0.7 * 1,039,232)


@dataclass(frozen=True, kw_only=True)
class DeviceProfile:
    name: str
    memory_budget_bytes: int
    context_length: int                    # tokens the KV cache holds (the worst case is scored)
    decode_bandwidth_bytes_per_s: float    # effective, as achieved by a real decode loop
    compute_flops_per_s: float             # effective prefill rate
    runtime_overhead_bytes: int            # runtime / allocator bytes beyond weights, KV, activations
    prefill_chunk: int                     # tokens per prefill step (sizes the activation buffers)
    bytes_per_weight: int = 2              # FP16 (the rules forbid quantization); also the compute dtype
    kv_bytes_per_value: int = 2            # FP16 KV cache
    description: str = ""

    def __post_init__(self):
        for field in ("memory_budget_bytes", "context_length", "prefill_chunk", "bytes_per_weight",
                      "kv_bytes_per_value"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"device profile {self.name!r}: {field} must be a positive integer, got {value!r}")
        for field in ("decode_bandwidth_bytes_per_s", "compute_flops_per_s"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"device profile {self.name!r}: {field} must be a positive number, got {value!r}")
        if not isinstance(self.runtime_overhead_bytes, int) or self.runtime_overhead_bytes < 0:
            raise ValueError(f"device profile {self.name!r}: runtime_overhead_bytes must be an integer >= 0, "
                             f"got {self.runtime_overhead_bytes!r}")

    def with_budget(self, budget_bytes: int | float) -> "DeviceProfile":
        """The same device with another memory budget (e.g. an experiment's `budget_gb`)."""
        if not isinstance(budget_bytes, (int, float)) or not math.isfinite(budget_bytes) or budget_bytes <= 0:
            raise ValueError(f"memory budget must be a positive number of bytes, got {budget_bytes!r}")
        return replace(self, memory_budget_bytes=int(budget_bytes))

    def to_dict(self) -> dict:
        return asdict(self)


PROFILES: Registry[DeviceProfile] = Registry("device profile")
PROFILES.add("phone-12gb", DeviceProfile(
    name="phone-12gb", memory_budget_bytes=12 * GIB, context_length=4096,
    decode_bandwidth_bytes_per_s=PHONE_DECODE_BANDWIDTH, compute_flops_per_s=PHONE_PREFILL_FLOPS,
    runtime_overhead_bytes=PHONE_OVERHEAD, prefill_chunk=512,
    description="12 GB Snapdragon 8 Gen 3 phone (OnePlus 12 class), FP16, 4096-token context"))
PROFILES.add("stories260k-tiny", DeviceProfile(
    name="stories260k-tiny", memory_budget_bytes=STORIES_BUDGET, context_length=512,
    decode_bandwidth_bytes_per_s=PHONE_DECODE_BANDWIDTH, compute_flops_per_s=PHONE_PREFILL_FLOPS,
    runtime_overhead_bytes=0, prefill_chunk=64,
    description="bundled stories260k: budget = 70 % of the dense model's modeled peak, phone rates"))


def get_profile(name: str | DeviceProfile) -> DeviceProfile:
    """A registered profile by name (did-you-mean on typos); a DeviceProfile passes through."""
    if isinstance(name, DeviceProfile):
        return name
    return PROFILES.get(name)
