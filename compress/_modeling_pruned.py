"""Per-layer-shaped Llama / Qwen2 / Phi models for Hugging Face `auto_map`.

This file is copied verbatim next to every non-uniformly pruned checkpoint and referenced from its
config's `auto_map`, so `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` works
with plain transformers (that is how OpenCompass loads models). It must therefore import nothing
but torch and transformers.

The config is the stock config of the family plus `layer_shapes`: one entry per kept layer with
`num_attention_heads`, `num_key_value_heads` and `intermediate_size`. 0 heads means the attention
sub-block is removed, 0 intermediate size means the MLP is removed. A removed sub-block keeps only
its output bias (Phi's `dense` / `fc2` bias), which is exactly what a fully-zeroed block computes.
`pruned_output_bias: true` gives every kept output projection (o_proj, down_proj) a bias (FLAP's bias
compensation on a family that has none there).
"""
import torch
from torch import nn
from transformers import LlamaForCausalLM, PhiForCausalLM, Qwen2ForCausalLM

# Where each family keeps its attention output projection and MLP projections.
_FAMILY = {
    "llama": dict(o="o_proj", mlp_in=("gate_proj", "up_proj"), mlp_out="down_proj", post_norm="post_attention_layernorm"),
    "qwen2": dict(o="o_proj", mlp_in=("gate_proj", "up_proj"), mlp_out="down_proj", post_norm="post_attention_layernorm"),
    "phi": dict(o="dense", mlp_in=("fc1",), mlp_out="fc2", post_norm=None),
}


class RemovedAttention(nn.Module):
    """Stands in for a removed attention block: no K/V heads, returns the output bias (or 0).

    It still appends a 1-value-per-token zero placeholder to the cache: generation reads the sequence
    length (and sizes padding masks) from layer 0's entry, and transformers treats an entry with no
    elements as empty, so a 0-head entry would make an attention-free layer 0 report length 0.
    """

    def __init__(self, hidden_size, layer_idx, has_bias, device=None, dtype=None):
        super().__init__()
        self.layer_idx = layer_idx
        self.bias = nn.Parameter(torch.zeros(hidden_size, device=device, dtype=dtype)) if has_bias else None

    def forward(self, hidden_states, *args, cache=None, past_key_values=None, **kwargs):
        cache = cache if cache is not None else past_key_values
        if cache is not None:
            b, s = hidden_states.shape[:2]
            placeholder = hidden_states.new_zeros(b, 1, s, 1)
            cache.update(placeholder, placeholder, self.layer_idx)
        out = torch.zeros_like(hidden_states)
        if self.bias is not None:
            out = out + self.bias
        return out, None


class RemovedMLP(nn.Module):
    """Stands in for a removed MLP: returns the output bias (or 0)."""

    def __init__(self, hidden_size, has_bias, device=None, dtype=None):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(hidden_size, device=device, dtype=dtype)) if has_bias else None

    def forward(self, hidden_states):
        out = torch.zeros_like(hidden_states)
        return out + self.bias if self.bias is not None else out


def _resize_linear(old, in_features, out_features, bias=False):
    return nn.Linear(in_features, out_features, bias=bias or old.bias is not None,
                     device=old.weight.device, dtype=old.weight.dtype)


def reshape_layers(model, config):
    """Rebuild every decoder layer with the sizes in `config.layer_shapes` (weights are loaded later)."""
    shapes = getattr(config, "layer_shapes", None)
    if not shapes:
        return
    family = _FAMILY[config.model_type]
    out_bias = bool(getattr(config, "pruned_output_bias", False))   # FLAP bias compensation on o_proj / down_proj
    hidden = config.hidden_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    for idx, (layer, shape) in enumerate(zip(model.model.layers, shapes)):
        heads, kv_heads, ffn = shape["num_attention_heads"], shape["num_key_value_heads"], shape["intermediate_size"]
        attn = layer.self_attn
        if heads == 0:
            o_bias = getattr(attn, family["o"]).bias is not None
            layer.self_attn = RemovedAttention(hidden, idx, o_bias)
            if family["post_norm"] is not None:  # sequential block: its input norm only fed attention
                layer.input_layernorm = nn.Identity()
        else:
            attn.q_proj = _resize_linear(attn.q_proj, hidden, heads * head_dim)
            attn.k_proj = _resize_linear(attn.k_proj, hidden, kv_heads * head_dim)
            attn.v_proj = _resize_linear(attn.v_proj, hidden, kv_heads * head_dim)
            setattr(attn, family["o"], _resize_linear(getattr(attn, family["o"]), heads * head_dim, hidden, out_bias))
            attn.num_key_value_groups = heads // kv_heads
            if hasattr(attn, "num_heads"):
                attn.num_heads, attn.num_key_value_heads = heads, kv_heads
        mlp = layer.mlp
        if ffn == 0:
            layer.mlp = RemovedMLP(hidden, getattr(mlp, family["mlp_out"]).bias is not None)
            if family["post_norm"] is not None:
                setattr(layer, family["post_norm"], nn.Identity())
        else:
            for name in family["mlp_in"]:
                setattr(mlp, name, _resize_linear(getattr(mlp, name), hidden, ffn))
            setattr(mlp, family["mlp_out"], _resize_linear(getattr(mlp, family["mlp_out"]), ffn, hidden, out_bias))


class PrunedLlamaForCausalLM(LlamaForCausalLM):
    def __init__(self, config):
        super().__init__(config)
        reshape_layers(self, config)


class PrunedQwen2ForCausalLM(Qwen2ForCausalLM):
    def __init__(self, config):
        super().__init__(config)
        reshape_layers(self, config)


class PrunedPhiForCausalLM(PhiForCausalLM):
    def __init__(self, config):
        super().__init__(config)
        reshape_layers(self, config)


PRUNED_CLASSES = {"llama": PrunedLlamaForCausalLM, "qwen2": PrunedQwen2ForCausalLM, "phi": PrunedPhiForCausalLM}
