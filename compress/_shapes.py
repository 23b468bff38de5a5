"""Integer shapes of a (possibly per-layer pruned) model, read from its config alone.

Everything that sizes a model without loading it (memory model, throughput model, search-space
repair, parameter counts) goes through `ModelShapes`, so config remains the single source of truth.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ._families import family_of

OUTPUT_BIAS_KEY = "pruned_output_bias"    # config flag: o_proj / down_proj carry added biases (_modeling_pruned.py)


@dataclass(frozen=True)
class LayerShape:
    num_attention_heads: int   # 0: attention removed
    num_key_value_heads: int
    intermediate_size: int     # 0: MLP removed

    @property
    def has_attention(self) -> bool:
        return self.num_attention_heads > 0

    @property
    def has_mlp(self) -> bool:
        return self.intermediate_size > 0


@dataclass(frozen=True)
class ModelShapes:
    model_type: str
    vocab_size: int
    hidden_size: int
    head_dim: int
    tie_word_embeddings: bool
    max_position_embeddings: int
    layers: tuple[LayerShape, ...]
    # every kept o_proj / down_proj carries a bias the family has none of (FLAP bias compensation, Plan.compensate)
    output_bias: bool = False

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def is_uniform(self) -> bool:
        """True when the stock architecture can hold these shapes (same sizes everywhere, no removed sub-block)."""
        first = self.layers[0] if self.layers else None
        return not self.output_bias and all(s == first and s.has_attention and s.has_mlp for s in self.layers)

    def layer_params(self, index: int) -> int:
        s = self.layers[index]
        return family_of(self).layer_params(hidden=self.hidden_size, head_dim=self.head_dim,
                                            heads=s.num_attention_heads, kv_heads=s.num_key_value_heads,
                                            ffn=s.intermediate_size, output_bias=self.output_bias)

    def param_count(self) -> int:
        """Exact number of parameters (tied embeddings counted once)."""
        emb = family_of(self).embedding_params(vocab=self.vocab_size, hidden=self.hidden_size,
                                               tied=self.tie_word_embeddings)
        return emb + sum(self.layer_params(i) for i in range(self.num_layers))

    def kv_bytes_per_token(self, bytes_per_value: int = 2) -> int:
        """K and V cache bytes one token adds across all layers (attention-free layers add none)."""
        return sum(2 * s.num_key_value_heads * self.head_dim * bytes_per_value for s in self.layers)

    def to_list(self) -> list[dict]:
        return [asdict(s) for s in self.layers]


def shapes_from_config(config) -> ModelShapes:
    family_of(config)  # refuse unsupported architectures early, with the list of supported ones
    hidden = config.hidden_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    per_layer = getattr(config, "layer_shapes", None)
    if per_layer:
        layers = tuple(LayerShape(int(s["num_attention_heads"]), int(s["num_key_value_heads"]),
                                  int(s["intermediate_size"])) for s in per_layer)
    else:
        kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        layers = tuple(LayerShape(config.num_attention_heads, kv, config.intermediate_size)
                       for _ in range(config.num_hidden_layers))
    if len(layers) != config.num_hidden_layers:
        raise ValueError(f"config has {config.num_hidden_layers} layers but {len(layers)} layer_shapes")
    return ModelShapes(model_type=config.model_type, vocab_size=config.vocab_size, hidden_size=hidden,
                       head_dim=head_dim, tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
                       max_position_embeddings=int(getattr(config, "max_position_embeddings", 2048)),
                       layers=layers, output_bias=bool(getattr(config, OUTPUT_BIAS_KEY, False)))
