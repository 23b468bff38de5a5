"""Integer shapes of a (possibly per-layer pruned) model, read from its config alone.

Everything that sizes a model without loading it (memory model, throughput model, search-space
repair, parameter counts) goes through `ModelShapes`, so config remains the single source of truth.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ._families import family_of
from ._inputs import number

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


# A model config's sizes, bounded far above any model this project compresses (Llama-3-8B: hidden 4096, 32
# layers, 128K vocabulary) so a broken config is refused before a model is built from it.
CONFIG_LIMITS = {"hidden_size": 2**17, "num_hidden_layers": 2**12, "num_attention_heads": 2**12,
                 "intermediate_size": 2**20, "vocab_size": 2**23, "max_position_embeddings": 2**24, "head_dim": 2**12}


def check_config(config) -> None:
    """A model config's shape fields: integers in range that fit together (heads divide into KV groups, the
    hidden size into heads, one layer_shapes entry per layer). One line naming the field, before any model is
    built (a string layer count, 0 KV heads would fail deep inside transformers or divide by zero)."""
    where = f"model config ({getattr(config, 'model_type', '?')})"

    def field(name, *, low=1, optional=False):
        value = getattr(config, name, None)
        if value is None and optional:
            return None
        return number(value, f"{where}: {name}", integer=True, low=low, high=CONFIG_LIMITS.get(name))

    hidden, heads = field("hidden_size"), field("num_attention_heads")
    field("num_hidden_layers")
    field("vocab_size")
    field("intermediate_size")
    field("max_position_embeddings", optional=True)
    kv = field("num_key_value_heads", optional=True)
    if kv is not None and heads % kv:
        raise ValueError(f"{where}: num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv})")
    if field("head_dim", optional=True) is None and hidden % heads:
        raise ValueError(f"{where}: hidden_size ({hidden}) must be a multiple of num_attention_heads ({heads}) "
                         "when the config has no head_dim")
    per_layer = getattr(config, "layer_shapes", None)
    if per_layer is not None:
        if not isinstance(per_layer, list) or len(per_layer) != config.num_hidden_layers:
            raise ValueError(f"{where}: layer_shapes must list one entry per layer ({config.num_hidden_layers})")
        for i, entry in enumerate(per_layer):
            if not isinstance(entry, dict):
                raise ValueError(f"{where}: layer_shapes[{i}] must be a mapping of the layer's sizes")
            h, k, f = (number(entry.get(key), f"{where}: layer_shapes[{i}].{key}", integer=True, low=0,
                              high=CONFIG_LIMITS[limit]) for key, limit in
                       (("num_attention_heads", "num_attention_heads"), ("num_key_value_heads", "num_attention_heads"),
                        ("intermediate_size", "intermediate_size")))
            if (h == 0) != (k == 0) or (k and h % k):
                raise ValueError(f"{where}: layer_shapes[{i}] has {h} heads in {k} KV groups")


def shapes_from_config(config) -> ModelShapes:
    family_of(config)  # refuse unsupported architectures early, with the list of supported ones
    check_config(config)
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
