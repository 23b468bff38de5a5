"""Peak inference memory of a candidate on a device, from its shapes alone (no weights loaded).

    peak = weights + KV cache + activations + runtime overhead

weights      exact parameter count x bytes per weight (tied embeddings counted once).
KV cache     per layer 2 (K and V) x KV heads x head_dim x context x bytes per value; a layer whose
             attention was removed holds no cache. The whole context is allocated, as llama.cpp /
             ExecuTorch / MLC do (static KV buffers), so this is the cache at its full size.
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
             attention on, as the validation backends start it).
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
    context = profile.context_length if context is None else context
    return shapes.kv_bytes_per_token(profile.kv_bytes_per_value) * context


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
    logits = chunk * shapes.vocab_size * LOGITS_BYTES
    return hidden + logits


def estimate_memory(shapes, profile: DeviceProfile | str) -> MemoryEstimate:
    """Modeled peak inference memory of `shapes` (a compress.ModelShapes) on `profile`."""
    profile = get_profile(profile)
    weights = weight_bytes(shapes, profile)
    kv = kv_cache_bytes(shapes, profile)
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
