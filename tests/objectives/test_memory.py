import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PhiConfig, Qwen2Config

import compress
import objectives
from compress._modeling_pruned import PRUNED_CLASSES
from objectives._memory import activation_bytes, widest_intermediate

TINY = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4, vocab_size=96,
            max_position_embeddings=64)
CONFIGS = {
    "llama-gqa-tied": LlamaConfig(**TINY, num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2-biases": Qwen2Config(**TINY, num_key_value_heads=2, tie_word_embeddings=False),
    "phi": PhiConfig(**TINY, tie_word_embeddings=False),
}
LAYER_SHAPES = [dict(num_attention_heads=0, num_key_value_heads=0, intermediate_size=48),    # attention removed
                dict(num_attention_heads=2, num_key_value_heads=1, intermediate_size=0),     # MLP removed
                dict(num_attention_heads=4, num_key_value_heads=2, intermediate_size=20)]


def pruned(config):
    c = config.__class__(**config.to_dict())
    c.layer_shapes = [dict(s) for s in LAYER_SHAPES]
    if config.model_type == "phi":                                   # MHA: one KV head per query head
        for s in c.layer_shapes:
            s["num_key_value_heads"] = s["num_attention_heads"]
    return c


def numel(model) -> int:
    return sum(p.numel() for p in model.parameters())                # shared (tied) tensors once


def profile(**overrides):
    return objectives.DeviceProfile(**{**objectives.get_profile("phone-12gb").to_dict(), **overrides})


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_weight_bytes_are_exact(name):
    torch.manual_seed(0)
    for config in (CONFIGS[name], pruned(CONFIGS[name])):
        model = (PRUNED_CLASSES[config.model_type](config) if getattr(config, "layer_shapes", None)
                 else AutoModelForCausalLM.from_config(config))
        est = objectives.estimate_memory(compress.shapes_from_config(config), "phone-12gb")
        assert est.weight_bytes == 2 * numel(model), (name, getattr(config, "layer_shapes", None))


def test_kv_cache_skips_attention_free_layers():
    config = pruned(CONFIGS["llama-gqa-tied"])
    p = profile(context_length=100)
    shapes = compress.shapes_from_config(config)
    est = objectives.estimate_memory(shapes, p)
    head_dim = 32 // 4
    assert est.kv_cache_bytes == sum(2 * kv * head_dim * 100 * 2 for kv in (0, 1, 2))
    none = config.__class__(**config.to_dict())
    none.layer_shapes = [dict(num_attention_heads=0, num_key_value_heads=0, intermediate_size=48)] * 3
    assert objectives.estimate_memory(compress.shapes_from_config(none), p).kv_cache_bytes == 0


def test_activation_term():
    config = pruned(CONFIGS["llama-gqa-tied"])
    shapes = compress.shapes_from_config(config)
    # widest: layer 0 MLP gate+up 2 x 48 = 96 > any attention (4 + 2 x 2) x 8 = 64
    assert widest_intermediate(shapes) == 96
    p = profile(prefill_chunk=10)
    assert activation_bytes(shapes, p) == 10 * (2 * 32 + 96) * 2 + 10 * 96 * 4
    phi = compress.shapes_from_config(CONFIGS["phi"])     # fc1 only: 48 < QKV (4 + 2 x 4) x 8 = 96
    assert widest_intermediate(phi) == 96
    short = profile(prefill_chunk=512, context_length=16)   # a chunk never exceeds the context
    assert activation_bytes(shapes, short) == activation_bytes(shapes, profile(prefill_chunk=16, context_length=16))


def test_llama_cpp_without_flash_attention_pads_v_and_materialises_scores():
    """llama.cpp without flash attention: every layer's V at the widest layer's KV width (attention-free layers
    included), and the widest layer's FP32 scores + FP32 mask in the compute buffer when larger than the logits."""
    from objectives._memory import kv_allocated_bytes, kv_cache_bytes
    shapes = compress.shapes_from_config(pruned(CONFIGS["llama-gqa-tied"]))        # KV heads 0 / 1 / 2, head_dim 8
    fa = profile(context_length=100, prefill_chunk=10)
    no_fa = profile(context_length=100, prefill_chunk=10, flash_attention=False)
    assert kv_allocated_bytes(shapes, fa) == kv_cache_bytes(shapes, fa) == (0 + 1 + 2) * 2 * 8 * 100 * 2
    assert kv_allocated_bytes(shapes, no_fa) == ((0 + 1 + 2) * 8 + 3 * 2 * 8) * 100 * 2
    assert kv_cache_bytes(shapes, no_fa) == kv_cache_bytes(shapes, fa)             # what decode reads is unchanged
    assert objectives.estimate_memory(shapes, no_fa).kv_cache_bytes == kv_allocated_bytes(shapes, no_fa)
    hidden = 10 * (2 * 32 + 96) * 2
    assert activation_bytes(shapes, fa) == hidden + 10 * 96 * 4                   # logits (vocab 96)
    assert activation_bytes(shapes, no_fa) == hidden + 10 * 100 * (4 + 1) * 4      # 4 heads' scores + the mask
    assert kv_allocated_bytes(shapes, no_fa.for_runtime("mlc")) == kv_cache_bytes(shapes, fa)   # llama.cpp's only
    with pytest.raises(ValueError, match="flash_attention must be true or false"):
        profile(flash_attention="no")


def test_total_and_budget_check_flip():
    shapes = compress.shapes_from_config(CONFIGS["qwen2-biases"])
    p = objectives.get_profile("phone-12gb")
    est = objectives.estimate_memory(shapes, p)
    assert est.total_bytes == est.weight_bytes + est.kv_cache_bytes + est.activation_bytes + est.overhead_bytes
    assert est.overhead_bytes == p.runtime_overhead_bytes
    at = objectives.estimate_memory(shapes, p.with_budget(est.total_bytes))
    assert at.fits and at.headroom_bytes == 0
    over = objectives.estimate_memory(shapes, p.with_budget(est.total_bytes - 1))
    assert not over.fits and over.headroom_bytes == -1
    assert set(est.to_dict()) == {"weight_bytes", "kv_cache_bytes", "activation_bytes", "overhead_bytes",
                                  "total_bytes", "budget_bytes", "fits", "headroom_bytes"}


def test_memory_objective():
    shapes = compress.shapes_from_config(CONFIGS["llama-gqa-tied"])
    obj = objectives.OBJECTIVES.get("memory")()
    values = obj.evaluate(objectives.Candidate(shapes=shapes), objectives.EvalContext(profile="stories260k-tiny"))
    assert set(values) == {m.name for m in obj.metrics()}
    assert values["fits_budget"] == 1 and values["params"] == shapes.param_count()
    assert values["peak_memory_bytes"] == objectives.estimate_memory(shapes, "stories260k-tiny").total_bytes
    with pytest.raises(ValueError, match="needs a device profile"):
        obj.evaluate(objectives.Candidate(shapes=shapes), objectives.EvalContext())
    both = objectives.evaluate_all(objectives.Candidate(shapes=shapes),
                                   objectives.EvalContext(profile=objectives.get_profile("phone-12gb")),
                                   objectives=["memory", "throughput"], weights=None)
    assert both["decode_tokens_per_s"] > 0 and both["memory_budget_bytes"] == 12 * 1024**3


def test_real_measurement_agrees_with_the_model():
    """One subprocess run of a small model: embedding and logits large enough to sit above RSS noise."""
    config = LlamaConfig(hidden_size=128, intermediate_size=344, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=32000, tie_word_embeddings=False)
    r = objectives.compare_memory(config, context=256, prefill_chunk=64, dtype="float32", timeout=120)
    assert r["dtype"] == "float32" and "4 bytes" in r["note"]
    assert r["measured"]["param_bytes"] == r["predicted"]["weight_bytes"]        # the FP32 weights, exactly
    assert abs(r["relative_error"]) < 0.25, r
