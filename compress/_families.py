"""Family adapters: where a model family keeps its weights, and how big each piece is.

The surgery and the criteria ask an adapter; they never `isinstance`-check a model. A new family
is one `FamilyAdapter(...)` registered under its HF `model_type`.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

from ._modeling_pruned import _FAMILY


@dataclass(frozen=True, kw_only=True)
class FamilyAdapter:
    model_type: str                # also keys the module names in _modeling_pruned._FAMILY
    qkv_bias: bool                 # q/k/v projections carry biases
    o_bias: bool
    mlp_bias: bool
    norm_vectors: int              # tensors per norm: RMSNorm 1 (weight), LayerNorm 2 (weight, bias)
    parallel_block: bool           # Phi: one shared input norm feeds attention and MLP
    lm_head_bias: bool
    description: str

    # Module names live in the self-contained modeling file (written once, shipped with checkpoints).
    @property
    def o_proj(self) -> str:
        return _FAMILY[self.model_type]["o"]

    @property
    def mlp_in(self) -> tuple[str, ...]:
        return _FAMILY[self.model_type]["mlp_in"]

    @property
    def mlp_out(self) -> str:
        return _FAMILY[self.model_type]["mlp_out"]

    # ---- module access -------------------------------------------------------------------
    def layers(self, model):
        return model.model.layers

    def attention(self, layer):
        attn = layer.self_attn
        return dict(q=attn.q_proj, k=attn.k_proj, v=attn.v_proj, o=getattr(attn, self.o_proj))

    def mlp(self, layer):
        mlp = layer.mlp
        return dict(ins=[getattr(mlp, n) for n in self.mlp_in], out=getattr(mlp, self.mlp_out))

    # ---- exact sizes ---------------------------------------------------------------------
    def layer_params(self, *, hidden: int, head_dim: int, heads: int, kv_heads: int, ffn: int,
                     output_bias: bool = False) -> int:
        """Parameters of one decoder layer with these shapes (removed sub-blocks keep only output biases the
        family has; `output_bias`: kept output projections carry an added bias, Plan.compensate)."""
        n = 0
        if heads:
            q, kv = heads * head_dim, kv_heads * head_dim
            n += hidden * (q + 2 * kv) + q * hidden
            n += (q + 2 * kv) if self.qkv_bias else 0
        n += hidden if (self.o_bias or (output_bias and heads)) else 0
        if ffn:
            n += len(self.mlp_in) * hidden * ffn + ffn * hidden
            n += len(self.mlp_in) * ffn if self.mlp_bias else 0
        n += hidden if (self.mlp_bias or (output_bias and ffn)) else 0
        norm = self.norm_vectors * hidden
        if self.parallel_block:
            n += norm if (heads or ffn) else 0
        else:
            n += (norm if heads else 0) + (norm if ffn else 0)
        return n

    def embedding_params(self, *, vocab: int, hidden: int, tied: bool) -> int:
        n = vocab * hidden + self.norm_vectors * hidden  # embeddings + final norm
        if not tied:
            n += vocab * hidden
        return n + (vocab if self.lm_head_bias else 0)


_ADAPTERS: dict[str, FamilyAdapter] = {}


def register_family(adapter: FamilyAdapter) -> FamilyAdapter:
    if adapter.model_type not in _FAMILY:
        raise ValueError(f"no per-layer modeling class for {adapter.model_type!r}")
    _ADAPTERS[adapter.model_type] = adapter
    return adapter


register_family(FamilyAdapter(
    model_type="llama",
    qkv_bias=False, o_bias=False, mlp_bias=False, norm_vectors=1, parallel_block=False,
    lm_head_bias=False, description="Llama (GQA, RMSNorm, SwiGLU)"))
register_family(FamilyAdapter(
    model_type="qwen2",
    qkv_bias=True, o_bias=False, mlp_bias=False, norm_vectors=1, parallel_block=False,
    lm_head_bias=False, description="Qwen2 (GQA with q/k/v biases)"))
register_family(FamilyAdapter(
    model_type="phi",
    qkv_bias=True, o_bias=True, mlp_bias=True, norm_vectors=2, parallel_block=True,
    lm_head_bias=True, description="Phi-2 (parallel attention+MLP, LayerNorm, partial rotary, biases)"))


def supported_families() -> list[str]:
    return sorted(_ADAPTERS)


def family_of(config) -> FamilyAdapter:
    """The adapter for a HF config, or a ValueError naming the supported families."""
    model_type = getattr(config, "model_type", None)
    if model_type in _ADAPTERS:
        if model_type == "llama" and getattr(config, "mlp_bias", False):
            raise ValueError("Llama variants with MLP biases are not supported yet")
        return _ADAPTERS[model_type]
    names = ", ".join(f"{a.model_type} = {a.description}" for a in _ADAPTERS.values())
    hint = difflib.get_close_matches(str(model_type), _ADAPTERS, n=1)
    extra = f" (did you mean {hint[0]!r}?)" if hint else ""
    raise ValueError(f"unsupported architecture {model_type!r}{extra}; supported families: {names}")
