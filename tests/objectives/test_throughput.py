"""The throughput model against ExecuTorch's published OnePlus 12 BF16 baselines (see objectives/_profiles.py).

Those runs used a 64-token prompt and generated up to ExecuTorch's default 128-token sequence, so
decode is checked at a 128-token context and prefill at a 64-token prompt. The phone rates were
fitted on these same points: the test shows that one bandwidth and one compute rate explain both
sizes (a 2.6x range of weight bytes), not an independent validation.
"""
import pytest
from transformers import LlamaConfig, PhiConfig

import compress
import objectives
from objectives._throughput import decode_bytes_per_token, matmul_params, prefill_flops_per_token

# Real Llama-3.2 shapes; configs only, weights are never built.
LLAMA_32_1B = LlamaConfig(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                          head_dim=64, intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True)
LLAMA_32_3B = LlamaConfig(hidden_size=3072, num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8,
                          head_dim=128, intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True)
DECODE_CONTEXT, PROMPT = 128, 64
PUBLISHED = {"1b": (LLAMA_32_1B, 19.2, 60.3), "3b": (LLAMA_32_3B, 7.6, 21.2)}   # decode, prefill tok/s


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_phone_points_within_15_percent(name):
    config, decode, prefill = PUBLISHED[name]
    shapes = compress.shapes_from_config(config)
    phone = objectives.get_profile("phone-12gb")
    assert shapes.param_count() == {"1b": 1_235_814_400, "3b": 3_212_749_824}[name]
    assert objectives.decode_tokens_per_s(shapes, phone, DECODE_CONTEXT) == pytest.approx(decode, rel=0.15)
    assert objectives.prefill_tokens_per_s(shapes, phone, PROMPT) == pytest.approx(prefill, rel=0.15)


def test_decode_reads_weights_and_full_context_kv():
    shapes = compress.shapes_from_config(LLAMA_32_1B)
    phone = objectives.get_profile("phone-12gb")
    kv_per_token = 16 * 2 * 8 * 64 * 2
    assert decode_bytes_per_token(shapes, phone, 0) == 2 * shapes.param_count()
    assert decode_bytes_per_token(shapes, phone) == 2 * shapes.param_count() + kv_per_token * 4096
    assert objectives.decode_tokens_per_s(shapes, phone) < objectives.decode_tokens_per_s(shapes, phone, 128)


def test_untied_input_embedding_is_not_read_per_token():
    config = PhiConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                       vocab_size=1000, tie_word_embeddings=False)
    shapes = compress.shapes_from_config(config)
    phone = objectives.get_profile("phone-12gb")
    assert decode_bytes_per_token(shapes, phone, 0) == 2 * (shapes.param_count() - 1000 * 64)


def test_prefill_flops_and_removed_blocks():
    base = LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=100)
    shapes = compress.shapes_from_config(base)
    per_layer = 64 * (64 + 2 * 32) + 64 * 64 + 3 * 64 * 96
    assert matmul_params(shapes) == 2 * per_layer
    assert prefill_flops_per_token(shapes, 10) == 2 * 2 * per_layer + 2 * (2 * 4 * 16 * 10)
    slim = LlamaConfig(**base.to_dict())
    slim.layer_shapes = [dict(num_attention_heads=0, num_key_value_heads=0, intermediate_size=96),
                         dict(num_attention_heads=4, num_key_value_heads=2, intermediate_size=0)]
    slim_shapes = compress.shapes_from_config(slim)
    phone = objectives.get_profile("phone-12gb")
    assert objectives.decode_tokens_per_s(slim_shapes, phone) > objectives.decode_tokens_per_s(shapes, phone)
    assert objectives.prefill_tokens_per_s(slim_shapes, phone) > objectives.prefill_tokens_per_s(shapes, phone)


def test_throughput_objective():
    shapes = compress.shapes_from_config(LLAMA_32_1B)
    obj = objectives.OBJECTIVES.get("throughput")()
    values = obj.evaluate(objectives.Candidate(shapes=shapes), objectives.EvalContext(profile="phone-12gb"))
    assert set(values) == {m.name for m in obj.metrics()}
    assert all(m.higher_is_better for m in obj.metrics())
    phone = objectives.get_profile("phone-12gb")
    assert values["decode_tokens_per_s"] == objectives.decode_tokens_per_s(shapes, phone)
    with pytest.raises(ValueError, match="did you mean"):
        obj.evaluate(objectives.Candidate(shapes=shapes), objectives.EvalContext(profile="phone12gb"))
