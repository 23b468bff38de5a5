"""Decode and prefill speed on a device profile, from shapes alone (a roofline with effective rates).

decode   batch-1 generation is memory-bound: every token reads each weight once and the whole KV cache,
         plus what the runtime spends per token whatever the model (graph build, dispatch, sampling:
         the profile's `token_overhead_s` for its runtime; it dominates for a sub-MB model),
             decode s/token = token overhead + (weight bytes read + KV bytes at the context) / decode bandwidth
         weight bytes read = all weights, less the input embedding table of an untied model (a decode
         step gathers one row of it; a tied table is read in full as the LM head). The KV term uses
         the full context (the slowest token of a long generation), so the score is a worst case.
prefill  compute-bound: tok/s = compute rate / FLOPs per prompt token,
             FLOPs per token = 2 x decoder matmul params + attention FLOPs
         The LM head is left out: a prompt needs logits for its last token only (ExecuTorch's
         OnePlus 12 points fit one compute rate only this way, see `_profiles`). Attention does
         QK^T and AV, 4 x heads x head_dim FLOPs per attended position; a causal prompt of `context`
         tokens attends to context / 2 positions on average, hence 2 x heads x head_dim x context.
"""
from __future__ import annotations

from compress import family_of

from ._base import OBJECTIVES, Candidate, EvalContext, Metric, Objective
from ._memory import kv_cache_bytes, profile_of
from ._profiles import DeviceProfile, get_profile
from ._provenance import SIMULATED


def decode_bytes_per_token(shapes, profile: DeviceProfile, context: int | None = None) -> int:
    """Bytes read from memory to generate one token with `context` tokens in the KV cache."""
    params = shapes.param_count()
    if not shapes.tie_word_embeddings:
        params -= shapes.vocab_size * shapes.hidden_size     # untied input table: one row per token
    return params * profile.bytes_per_weight + kv_cache_bytes(shapes, profile, context)


def decode_tokens_per_s(shapes, profile: DeviceProfile | str, context: int | None = None) -> float:
    profile = get_profile(profile)
    seconds = profile.token_overhead_s + decode_bytes_per_token(shapes, profile, context) / \
        profile.decode_bandwidth_bytes_per_s
    return 1.0 / seconds


def matmul_params(shapes) -> int:
    """Weights of the decoder layers' matrix multiplies (no norms, biases, embeddings or LM head)."""
    mlp_mats = len(family_of(shapes).mlp_in) + 1
    n = 0
    for s in shapes.layers:
        if s.has_attention:
            q, kv = s.num_attention_heads * shapes.head_dim, s.num_key_value_heads * shapes.head_dim
            n += shapes.hidden_size * (q + 2 * kv) + q * shapes.hidden_size
        n += mlp_mats * shapes.hidden_size * s.intermediate_size
    return n


def prefill_flops_per_token(shapes, context: int) -> float:
    """Average FLOPs per token of a causal prompt `context` tokens long."""
    attention = sum(2 * s.num_attention_heads * shapes.head_dim * context for s in shapes.layers)
    return 2 * matmul_params(shapes) + attention


def prefill_tokens_per_s(shapes, profile: DeviceProfile | str, context: int | None = None) -> float:
    profile = get_profile(profile)
    context = profile.context_length if context is None else context
    return profile.compute_flops_per_s / prefill_flops_per_token(shapes, context)


@OBJECTIVES.register("throughput")
class ThroughputObjective(Objective):
    """Modeled decode and prefill tokens/s at the profile's context length. Shape-only, one fidelity level."""

    name = "throughput"
    max_fidelity = 0

    def metrics(self) -> list[Metric]:
        return [Metric(name="decode_tokens_per_s", unit="tokens/s", higher_is_better=True, kind=SIMULATED),
                Metric(name="prefill_tokens_per_s", unit="tokens/s", higher_is_better=True, kind=SIMULATED)]

    def evaluate(self, candidate: Candidate, context: EvalContext, fidelity: int = 0) -> dict[str, float]:
        profile = profile_of(context, self.name)
        return {"decode_tokens_per_s": decode_tokens_per_s(candidate.shapes, profile),
                "prefill_tokens_per_s": prefill_tokens_per_s(candidate.shapes, profile)}
