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

Runtimes. What an inference runtime adds beyond the model's own bytes and bandwidth is the profile's
per-runtime cost (`runtimes`, selected with `for_runtime`): `overhead_bytes`, memory the runtime holds
whatever the model (its code pages, thread pool, allocator, context and sampling state), and
`token_overhead_s`, time per generated token beyond reading the weights and KV cache (graph build,
kernel dispatch, sampling). Both are what `validate --calibrate` fits from measurements
(cluster/_calibrate.py) and writes into a user profile file, with the measurements they came from.
llama.cpp runs with flash attention on (the emulated backend and llama-bench's `-fa 1`), so attention
scores stay in tiles, as the memory model assumes.

phone-12gb: both runtimes get the ExecuTorch-derived overhead above and no per-token cost; neither
llama.cpp nor MLC has been measured on a phone here (`validate --device adb --calibrate FILE` fits them).

stories260k-tiny: the bundled model on the emulated device (llama.cpp on this host, numbers at the
constants below, from bench/sim_vs_measured.py). The budget is llama.cpp's fixed memory plus 70 % of
the dense model's own modeled bytes, so it binds on what the runtime really needs: the dense model does
not fit and the search must cut about 38 % of the prunable bytes. The phone's rates; a 64-token prefill
chunk keeps the unprunable logits buffer from dominating a model this small. MLC cannot run on this
host: its costs are llama.cpp's (not measured).

smollm2-135m-emulated: SmolLM2-135M-Instruct (`--model smollm2-135m`) on the same emulated device, built the same
way: llama.cpp's fixed memory and per-token cost fitted by `validate --calibrate` on a search's top candidates
(bench/sim_vs_measured.py --model smollm2-135m), a budget of that fixed memory + 70 % of the dense model's own
bytes (here the weights, 269 MB, not the runtime, dominate), phone rates, a 2048-token context and a 64-token
prefill chunk (the 49,152-token vocabulary makes each chunk token's FP32 logits 197 KB: at llama.cpp's default
512-token chunk they alone would be a third of the budget, and no pruning can shrink them).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from compress import Registry, number, read_json

GIB = 1024**3
DEFAULT_PROFILE = "phone-12gb"

# Phone rates (derivation in the module docstring).
PHONE_DECODE_BANDWIDTH = 48e9          # bytes/s, effective BF16/FP16 decode on Snapdragon 8 Gen 3
PHONE_PREFILL_FLOPS = 1.2e11           # FLOP/s, effective CPU prefill on the same phone
PHONE_OVERHEAD = 1 * GIB               # runtime + allocator beyond weights, KV and activations

RUNTIMES = ("llama.cpp", "mlc")
# Upper bounds that keep a profile's arithmetic (and a validation run at its context) bounded: 1 PiB of memory,
# a million-token context.
MAX_INTEGER = {"memory_budget_bytes": 2**50, "context_length": 2**20, "prefill_chunk": 2**20}

# Dense stories260k (LlamaConfig hidden 64, 5 layers, 8 heads, 4 KV heads, head_dim 8, ffn 172,
# vocab 512, tied) in FP16 at context 512 with a 64-token prefill chunk (`_memory.estimate_memory`):
#   weights      260,032 params x 2                                   =   520,064
#   KV cache     5 layers x 2 (K,V) x 4 heads x 8 x 512 tokens x 2    =   327,680
#   activations  64 x 2 x (2 x 64 + max(8x8 + 2x4x8, 2 x 172))        =    60,416
#   logits       64 x 512 x 4 (FP32)                                  =   131,072
#   model bytes                                                       = 1,039,232
# Budget = llama.cpp's fixed memory + 70 % of the model bytes, rounded down.
STORIES_DENSE_PEAK = 1_039_232         # the dense model's own bytes (no runtime)
STORIES_BUDGET_FRACTION = 0.7
# llama.cpp on the emulated host (bench/sim_vs_measured.py: `validate --calibrate` pooled over 3 runs on the
# bundled search's top 3 candidates, 2026-11-30; bench/results/sim_vs_measured.json is the next run, which
# checked these constants): memory llama.cpp allocates beyond the model's bytes (compute and output buffers,
# logits, context; anonymous memory, not the code and data files a process touches, see
# cluster/_emulated_child.py), as the upper envelope (largest residual + the residuals' spread, 42 KB over
# 9 measurements; a candidate's residual moves by at most ~11 KB between runs) so a candidate the search packs up to the budget still fits when
# measured, and time per decoded token beyond reading weights and KV cache, projected to the phone like the
# emulated measurement itself.
STORIES_LLAMACPP_OVERHEAD = 2_732_032
STORIES_LLAMACPP_TOKEN_S = 3.5e-5
STORIES_BUDGET = STORIES_LLAMACPP_OVERHEAD + 727_462    # + floor(0.7 * 1,039,232)


# Dense SmolLM2-135M (hidden 576, 30 layers, 9 heads / 3 KV heads of 64, SwiGLU 1536, vocab 49,152, tied) in FP16
# at context 2048 with a 64-token prefill chunk (`_memory.estimate_memory`):
#   weights      134,515,008 params x 2                                 = 269,030,016
#   KV cache     30 layers x 2 x 3 heads x 64 x 2048 tokens x 2          =  47,185,920
#   activations  64 x 2 x (2 x 576 + 2 x 1536)                          =     540,672
#   logits       64 x 49,152 x 4 (FP32)                                 =  12,582,912
#   model bytes                                                         = 329,339,520
SMOLLM2_DENSE_PEAK = 329_339_520
# llama.cpp on the emulated host for this model (bench/results/sim_vs_measured_smollm2.json: `validate --calibrate`
# pooled over 3 runs on the search's top 3, as for the bundled model): fixed memory (upper envelope of the
# residuals) and time per decoded token beyond reading weights and KV cache, projected to the phone.
SMOLLM2_LLAMACPP_OVERHEAD = 10_293_248
SMOLLM2_LLAMACPP_TOKEN_S = 2.5e-3
SMOLLM2_BUDGET = SMOLLM2_LLAMACPP_OVERHEAD + 230_537_664     # + floor(0.7 * 329,339,520)


@dataclass(frozen=True, kw_only=True)
class RuntimeCost:
    """What one inference runtime adds on a device (see the module docstring)."""
    overhead_bytes: int = 0
    token_overhead_s: float = 0.0

    def __post_init__(self):
        number(self.overhead_bytes, "runtime overhead_bytes", integer=True, low=0)
        number(self.token_overhead_s, "runtime token_overhead_s", low=0)


@dataclass(frozen=True, kw_only=True)
class DeviceProfile:
    name: str
    memory_budget_bytes: int
    context_length: int                    # tokens the KV cache holds (the worst case is scored)
    decode_bandwidth_bytes_per_s: float    # effective, as achieved by a real decode loop
    compute_flops_per_s: float             # effective prefill rate
    runtime_overhead_bytes: int            # the active runtime's bytes beyond weights, KV, activations
    prefill_chunk: int                     # tokens per prefill step (sizes the activation buffers)
    bytes_per_weight: int = 2              # FP16 (the rules forbid quantization); also the compute dtype
    kv_bytes_per_value: int = 2            # FP16 KV cache
    description: str = ""
    runtime: str = "llama.cpp"             # the active runtime (runtime_overhead_bytes, token_overhead_s are its)
    token_overhead_s: float = 0.0          # the active runtime's seconds per decoded token beyond memory traffic
    runtimes: dict = field(default_factory=dict)   # runtime name -> RuntimeCost
    # llama.cpp's flash attention (the validation backends start it so): off, attention scores are materialised
    # and the V cache is padded to the widest layer (objectives/_memory.py)
    flash_attention: bool = True

    def __post_init__(self):
        if not isinstance(self.name, str) or not isinstance(self.description, str):
            raise ValueError(f"device profile: name and description must be strings, got {self.name!r}")
        where = f"device profile {self.name!r}: "
        for field in ("memory_budget_bytes", "context_length", "prefill_chunk"):
            number(getattr(self, field), where + field, integer=True, low=1, high=MAX_INTEGER[field],
                   noun="a positive integer")
        # a prefill chunk longer than the context is allowed: the memory model clamps it to the context
        for field, allowed in (("bytes_per_weight", (2, 4)), ("kv_bytes_per_value", (1, 2, 4))):
            value = getattr(self, field)
            if isinstance(value, bool) or value not in allowed:
                raise ValueError(f"{where}{field} must be one of {', '.join(map(str, allowed))} (FP16 / FP32 weights: "
                                 f"the rules forbid quantization), got {value!r}")
        for field in ("decode_bandwidth_bytes_per_s", "compute_flops_per_s"):
            number(getattr(self, field), where + field, low=0, low_open=True, noun="a positive number",
                   show_range=False)
        number(self.runtime_overhead_bytes, where + "runtime_overhead_bytes", integer=True, low=0)
        number(self.token_overhead_s, where + "token_overhead_s", low=0)
        if not isinstance(self.runtime, str) or self.runtime not in RUNTIMES:
            raise ValueError(f"{where}runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        if not isinstance(self.runtimes, dict):
            raise ValueError(f"{where}runtimes maps each of {', '.join(RUNTIMES)} to its costs "
                             f'({{"llama.cpp": {{"overhead_bytes": N, "token_overhead_s": S}}}}), got {self.runtimes!r}')
        if not isinstance(self.flash_attention, bool):
            raise ValueError(f"{where}flash_attention must be true or false, got {self.flash_attention!r}")
        # to_dict() / a profile file hold the costs as plain mappings
        costs = {}
        for name, cost in self.runtimes.items():
            if name not in RUNTIMES or not isinstance(cost, (dict, RuntimeCost)):
                raise ValueError(f"{where}runtimes maps one of {', '.join(RUNTIMES)} to its costs, got {name!r}: "
                                 f"{cost!r}")
            if isinstance(cost, dict):
                unknown = sorted(set(cost) - {"overhead_bytes", "token_overhead_s"})
                if unknown:
                    raise ValueError(f"{where}runtimes[{name!r}]: unknown fields {unknown}")
                cost = RuntimeCost(**cost)
            costs[name] = cost
        object.__setattr__(self, "runtimes", costs)

    def for_runtime(self, runtime: str) -> "DeviceProfile":
        """The same device running `runtime` (its fixed memory and per-token cost become the active ones)."""
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {runtime!r}; known: {', '.join(RUNTIMES)}")
        cost = self.runtimes.get(runtime)
        if cost is None:
            return replace(self, runtime=runtime)
        return replace(self, runtime=runtime, runtime_overhead_bytes=cost.overhead_bytes,
                       token_overhead_s=float(cost.token_overhead_s))

    def with_runtime_cost(self, runtime: str, cost: RuntimeCost, **changes) -> "DeviceProfile":
        """A copy whose `runtime` costs are `cost` (and other fields `changes`), active for that runtime."""
        return replace(self, runtimes={**self.runtimes, runtime: cost}, **changes).for_runtime(runtime)

    def with_budget(self, budget_bytes: int | float) -> "DeviceProfile":
        """The same device with another memory budget (e.g. an experiment's `budget_gb`)."""
        number(budget_bytes, "memory budget", low=0, low_open=True, noun="a positive number of bytes",
               show_range=False)
        return replace(self, memory_budget_bytes=int(budget_bytes))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "DeviceProfile":
        if not isinstance(data, dict):
            raise ValueError(f"device profile: expected a mapping of its fields, got {data!r}"[:200])
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"device profile: unknown fields {unknown}")
        return cls(**data)


def _profile(*, costs: dict, runtime: str = "llama.cpp", **fields) -> DeviceProfile:
    return DeviceProfile(runtime_overhead_bytes=0, runtimes=costs, **fields).for_runtime(runtime)


PROFILES: Registry[DeviceProfile] = Registry("device profile")
PROFILES.add("phone-12gb", _profile(
    name="phone-12gb", memory_budget_bytes=12 * GIB, context_length=4096,
    decode_bandwidth_bytes_per_s=PHONE_DECODE_BANDWIDTH, compute_flops_per_s=PHONE_PREFILL_FLOPS, prefill_chunk=512,
    costs={r: RuntimeCost(overhead_bytes=PHONE_OVERHEAD) for r in RUNTIMES},
    description="12 GB Snapdragon 8 Gen 3 phone (OnePlus 12 class), FP16, 4096-token context"))


def _emulated(*, name: str, budget: int, context: int, overhead: int, token_s: float, description: str) -> DeviceProfile:
    """A model on the emulated device: phone rates, a 64-token prefill chunk, llama.cpp's fitted costs (for MLC
    too: it cannot run on this host, so its costs are llama.cpp's, not measured)."""
    return _profile(name=name, memory_budget_bytes=budget, context_length=context, prefill_chunk=64,
                    decode_bandwidth_bytes_per_s=PHONE_DECODE_BANDWIDTH, compute_flops_per_s=PHONE_PREFILL_FLOPS,
                    costs={r: RuntimeCost(overhead_bytes=overhead, token_overhead_s=token_s) for r in RUNTIMES},
                    description=description)


PROFILES.add("stories260k-tiny", _emulated(
    name="stories260k-tiny", budget=STORIES_BUDGET, context=512, overhead=STORIES_LLAMACPP_OVERHEAD,
    token_s=STORIES_LLAMACPP_TOKEN_S, description="bundled stories260k on the emulated device: budget = llama.cpp's "
    "fixed memory + 70 % of the dense model's bytes, phone rates"))
PROFILES.add("smollm2-135m-emulated", _emulated(
    name="smollm2-135m-emulated", budget=SMOLLM2_BUDGET, context=2048, overhead=SMOLLM2_LLAMACPP_OVERHEAD,
    token_s=SMOLLM2_LLAMACPP_TOKEN_S, description="SmolLM2-135M on the emulated device: budget = llama.cpp's fixed "
    "memory + 70 % of the dense model's bytes, phone rates, context 2048"))


PROFILE_FILE_SUFFIX = ".json"


def get_profile(name) -> DeviceProfile:
    """A registered profile by name (did-you-mean on typos), or a user profile file (`validate --calibrate`
    writes one: a path ending in .json); a DeviceProfile passes through."""
    if isinstance(name, DeviceProfile):
        return name
    if isinstance(name, (str, Path)) and str(name).endswith(PROFILE_FILE_SUFFIX):
        return read_profile_file(name)
    return PROFILES.get(name)


def shippable_profile(device):
    """What a search ships to its trials: a registered profile's name, or a profile file's DeviceProfile (by
    value, so a trial on another node needs no path on the driver's disk)."""
    return get_profile(device) if str(device).endswith(PROFILE_FILE_SUFFIX) else device


def read_profile_file(path) -> DeviceProfile:
    """A user profile: {"profile": {DeviceProfile fields}, "calibration": [...]} (cluster/_calibrate.py)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ValueError(f"device profile file {path} not found")
    data = read_json(path, "device profile file")
    if not isinstance(data, dict) or not isinstance(data.get("profile"), dict):
        raise ValueError(f"device profile file {path}: expected an object with a 'profile' section")
    try:
        return DeviceProfile.from_dict(data["profile"])
    except TypeError as err:
        raise ValueError(f"device profile file {path}: {err}") from None
