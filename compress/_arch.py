"""A Track 2 architecture: the integer shapes of a Llama-family model built from scratch.

`Arch` is to training from scratch what `Plan` is to pruning: the only thing `spaces` hands `compress`.
Llama (RMSNorm, SwiGLU, RoPE, GQA) because every runtime the project exports to runs it: llama.cpp
(`llama` for uniform shapes, `deci` for per-layer FFN widths), MLC (uniform), and plain transformers.
Per-layer FFN widths reuse the pruned-model class and its `layer_shapes` config (compress/_modeling_pruned.py),
so a scratch checkpoint saves, loads, exports and evaluates exactly like a pruned one.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ._shapes import LayerShape, ModelShapes

INIT_STD = 0.02            # HF Llama's initializer_range (GPT-2's choice; fine from 100K to 1B parameters)
ROPE_THETA = 10000.0
RMS_EPS = 1e-5


@dataclass(frozen=True, kw_only=True)
class Arch:
    layers: int
    hidden: int
    heads: int                 # query heads
    kv_heads: int              # GQA: heads is a multiple of kv_heads
    head_dim: int              # free: heads x head_dim need not equal hidden (heads must divide it)
    ffn: tuple                 # SwiGLU width of each layer
    tie: bool                  # input embeddings shared with the LM head
    vocab: int
    context: int               # training sequence length = max_position_embeddings

    def __post_init__(self):
        object.__setattr__(self, "ffn", tuple(int(f) for f in self.ffn))
        for name in ("layers", "hidden", "heads", "kv_heads", "head_dim", "vocab", "context"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"architecture {name} must be a positive integer, got {value!r}")
        if self.heads % self.kv_heads:
            raise ValueError(f"{self.heads} query heads do not split into {self.kv_heads} KV groups")
        if self.hidden % self.heads:
            raise ValueError(f"{self.heads} query heads must divide the hidden size {self.hidden} (transformers checks it)")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even (RoPE rotates pairs), got {self.head_dim}")
        if len(self.ffn) != self.layers or min(self.ffn) < 1:
            raise ValueError(f"ffn needs one positive width per layer ({self.layers}), got {list(self.ffn)}")

    @property
    def uniform(self) -> bool:
        return len(set(self.ffn)) == 1

    def shapes(self) -> ModelShapes:
        """What the memory and throughput models read (the same type pruning produces)."""
        return ModelShapes(model_type="llama", vocab_size=self.vocab, hidden_size=self.hidden, head_dim=self.head_dim,
                           tie_word_embeddings=self.tie, max_position_embeddings=self.context,
                           layers=tuple(LayerShape(self.heads, self.kv_heads, f) for f in self.ffn))

    def params(self) -> int:
        return self.shapes().param_count()

    def config(self, *, bos_token_id: int = 0, eos_token_id: int = 1):
        from transformers import LlamaConfig
        config = LlamaConfig(vocab_size=self.vocab, hidden_size=self.hidden, num_hidden_layers=self.layers,
                             num_attention_heads=self.heads, num_key_value_heads=self.kv_heads, head_dim=self.head_dim,
                             intermediate_size=max(self.ffn), max_position_embeddings=self.context,
                             tie_word_embeddings=self.tie, rms_norm_eps=RMS_EPS, initializer_range=INIT_STD,
                             rope_parameters={"rope_theta": ROPE_THETA, "rope_type": "default"},
                             bos_token_id=bos_token_id, eos_token_id=eos_token_id, attention_bias=False,
                             mlp_bias=False, hidden_act="silu")
        if not self.uniform:
            config.layer_shapes = [{"num_attention_heads": self.heads, "num_key_value_heads": self.kv_heads,
                                    "intermediate_size": f} for f in self.ffn]
        return config

    def to_dict(self) -> dict:
        return {**asdict(self), "ffn": list(self.ffn)}

    @classmethod
    def from_dict(cls, data: dict) -> "Arch":
        return cls(**{**data, "ffn": tuple(data["ffn"])})

    def describe(self) -> str:
        ffn = str(self.ffn[0]) if self.uniform else f"{min(self.ffn)}-{max(self.ffn)}"
        return (f"{self.layers}L h{self.hidden} {self.heads}x{self.head_dim} heads/{self.kv_heads} kv ffn {ffn} "
                f"vocab {self.vocab}{' tied' if self.tie else ''} ctx {self.context}")


def build_scratch_model(arch: Arch, *, tokenizer=None, seed: int = 0):
    """A freshly initialised FP32 model of `arch` (eval mode, CPU). Per-layer FFN widths use the
    pruned-model class, whose rebuilt layers are initialised like the rest (normal, std INIT_STD)."""
    import torch
    from transformers import LlamaForCausalLM
    from ._modeling_pruned import PrunedLlamaForCausalLM

    ids = {}
    if tokenizer is not None:
        if len(tokenizer) > arch.vocab:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the architecture's vocabulary is {arch.vocab}")
        ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    config = arch.config(**ids)
    torch.manual_seed(seed)
    with torch.device("cpu"):
        model = (LlamaForCausalLM if arch.uniform else PrunedLlamaForCausalLM)(config)
    if not arch.uniform:     # reshape_layers made fresh nn.Linear layers (PyTorch's default init)
        model.apply(model._init_weights)
        model.tie_weights()
    return model.float().eval()
