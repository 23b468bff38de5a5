"""Peak inference memory of a candidate on a device, from its shapes alone (no weights loaded).

    peak = weights + KV cache + activations + runtime overhead

weights      exact parameter count x bytes per weight (tied embeddings counted once).
KV cache     per layer 2 (K and V) x KV heads x head_dim x context x bytes per value; a layer whose
             attention was removed holds no cache. The whole context is allocated, as llama.cpp /
             ExecuTorch / MLC do (static KV buffers), so this is the cache at its full size.
             llama.cpp without flash attention (a profile's `flash_attention: false`) stores V transposed
             and pads it to the widest layer's KV width in EVERY layer of the file, attention-free ones
             included ("padding V cache to ..." in its log; measured on a per-layer pruned SmolLM2-135M:
             39,583,744 B = K per layer + 28 layers x 192 x 2048 x 2, against 35,127,296 with it on).
activations  the buffers live during one prefill chunk of `prefill_chunk` tokens (min with the context),
             in the compute dtype (= the weight dtype):
               2 x hidden                  residual stream + normed input of the current sub-block
             + the widest layer intermediate: max over layers of
                 (q + 2 kv heads) x head_dim     fused Q/K/V projections of an attention block
                 len(mlp inputs) x ffn           SwiGLU gate + up (Llama, Qwen2), fc1 (Phi)
             all x chunk tokens; plus the logits of the chunk, chunk x vocab x 4 (FP32: runtimes
             keep logits in FP32). Runtimes reuse one compute buffer across layers, so only the widest
             layer counts. This is conservative for plain generation, where only the last prompt
             token's logits are needed, and exact for scoring (perplexity / log-likelihood), which
             needs every position's logits.
             Attention scores are not counted: runtimes keep them in tiles (llama.cpp runs with flash
             attention on, as the validation backends start it). Without flash attention llama.cpp
             materialises the widest layer's scores, heads x chunk x context in FP32, next to an FP32
             mask of chunk x context; its allocator reuses one buffer for the whole graph, so the larger
             of that and the logits counts (measured, SmolLM2-135M, chunk 512 / context 8192: compute
             buffer 174.5 MB, modeled 172.1; chunk 64: 21.8, modeled 21.5; with flash attention the logits
             stage, 103.0 MB, is the buffer to the byte).
             llama.cpp's compute buffer is reserved for a whole chunk when the context is created, but
             only the pages a prompt touches become resident: the emulated backend's measured peak
             matches this term when the prompt fills a chunk (validate's default prompt is 64 tokens,
             the emulated profiles' chunk). Its one-row output buffer (vocab x 4 B) is constant over a
             model's search and sits in the runtime's fitted fixed memory below.
overhead     the fixed memory of the profile's active runtime (`DeviceProfile.for_runtime`: code pages,
             thread pool, allocator and context state), fitted from measurements (`validate --calibrate`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from compress import family_of

from ._base import OBJECTIVES, Candidate, EvalContext, Metric, Objective
from ._profiles import DeviceProfile, get_profile
from ._provenance import SIMULATED

LIVE_HIDDEN_BUFFERS = 2        # residual stream + normed input, each chunk x hidden
LOGITS_BYTES = 4               # FP32 logits, whatever the weight dtype
SCORE_BYTES = 4                # FP32 attention scores and mask (llama.cpp without flash attention)


@dataclass(frozen=True, kw_only=True)
class MemoryEstimate:
    weight_bytes: int
    kv_cache_bytes: int
    activation_bytes: int
    overhead_bytes: int
    total_bytes: int
    budget_bytes: int
    fits: bool
    headroom_bytes: int        # budget - total; negative when over budget

    def to_dict(self) -> dict:
        return asdict(self)


def weight_bytes(shapes, profile: DeviceProfile) -> int:
    return shapes.param_count() * profile.bytes_per_weight


def kv_cache_bytes(shapes, profile: DeviceProfile, context: int | None = None) -> int:
    """KV cache bytes at `context` that attention reads (each layer's own width)."""
    context = profile.context_length if context is None else context
    return shapes.kv_bytes_per_token(profile.kv_bytes_per_value) * context


def pads_v_cache(profile: DeviceProfile) -> bool:
    return profile.runtime == "llama.cpp" and not profile.flash_attention


def kv_allocated_bytes(shapes, profile: DeviceProfile, context: int | None = None) -> int:
    """KV cache bytes the runtime allocates: what attention reads, plus llama.cpp's V padding without flash
    attention (every layer's V at the widest layer's width)."""
    if not pads_v_cache(profile):
        return kv_cache_bytes(shapes, profile, context)
    context = profile.context_length if context is None else context
    widest = max(s.num_key_value_heads for s in shapes.layers) * shapes.head_dim
    values = sum(s.num_key_value_heads * shapes.head_dim + widest for s in shapes.layers)
    return values * profile.kv_bytes_per_value * context


def widest_intermediate(shapes) -> int:
    """Largest per-token intermediate width of any layer (values, not bytes)."""
    mlp_inputs = len(family_of(shapes).mlp_in)
    widest = 0
    for s in shapes.layers:
        attn = (s.num_attention_heads + 2 * s.num_key_value_heads) * shapes.head_dim if s.has_attention else 0
        widest = max(widest, attn, mlp_inputs * s.intermediate_size)
    return widest


def activation_bytes(shapes, profile: DeviceProfile) -> int:
    chunk = min(profile.prefill_chunk, profile.context_length)
    hidden = chunk * (LIVE_HIDDEN_BUFFERS * shapes.hidden_size + widest_intermediate(shapes)) * profile.bytes_per_weight
    graph = chunk * shapes.vocab_size * LOGITS_BYTES
    if pads_v_cache(profile):        # no flash attention: the widest layer's FP32 scores and the FP32 mask
        heads = max(s.num_attention_heads for s in shapes.layers)
        graph = max(graph, chunk * profile.context_length * (heads + 1) * SCORE_BYTES)
    return hidden + graph


def estimate_memory(shapes, profile: DeviceProfile | str) -> MemoryEstimate:
    """Modeled peak inference memory of `shapes` (a compress.ModelShapes) on `profile`."""
    profile = get_profile(profile)
    weights = weight_bytes(shapes, profile)
    kv = kv_allocated_bytes(shapes, profile)
    act = activation_bytes(shapes, profile)
    overhead = profile.runtime_overhead_bytes
    total = weights + kv + act + overhead
    budget = profile.memory_budget_bytes
    return MemoryEstimate(weight_bytes=weights, kv_cache_bytes=kv, activation_bytes=act, overhead_bytes=overhead,
                          total_bytes=total, budget_bytes=budget, fits=total <= budget, headroom_bytes=budget - total)


def profile_of(context: EvalContext, objective: str) -> DeviceProfile:
    if context is None or context.profile is None:
        raise ValueError(f"the {objective} objective needs a device profile: set EvalContext(profile=...) to a "
                         f"DeviceProfile or a profile name (e.g. 'phone-12gb')")
    return get_profile(context.profile)


@OBJECTIVES.register("memory")
class MemoryObjective(Objective):
    """Modeled peak memory against the profile's budget. Shape-only: one fidelity level, no model needed."""

    name = "memory"
    max_fidelity = 0

    def metrics(self) -> list[Metric]:
        return [Metric(name="peak_memory_bytes", unit="bytes", higher_is_better=False, kind=SIMULATED),
                Metric(name="weight_bytes", unit="bytes", higher_is_better=False, kind=SIMULATED),
                Metric(name="kv_cache_bytes", unit="bytes", higher_is_better=False, kind=SIMULATED),
                Metric(name="activation_bytes", unit="bytes", higher_is_better=False, kind=SIMULATED),
                Metric(name="overhead_bytes", unit="bytes", higher_is_better=False, kind=SIMULATED),
                Metric(name="memory_budget_bytes", unit="bytes", higher_is_better=True),   # info
                Metric(name="fits_budget", unit="bool", higher_is_better=True, kind=SIMULATED),
                Metric(name="params", unit="count", higher_is_better=False)]               # info: parameter count

    def evaluate(self, candidate: Candidate, context: EvalContext, fidelity: int = 0) -> dict[str, float]:
        est = estimate_memory(candidate.shapes, profile_of(context, self.name))
        return {"peak_memory_bytes": est.total_bytes, "weight_bytes": est.weight_bytes,
                "kv_cache_bytes": est.kv_cache_bytes, "activation_bytes": est.activation_bytes,
                "overhead_bytes": est.overhead_bytes, "memory_budget_bytes": est.budget_bytes,
                "fits_budget": 1 if est.fits else 0, "params": candidate.shapes.param_count()}
