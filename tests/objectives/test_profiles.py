import json
import math

import pytest
from transformers import LlamaConfig

import compress
import objectives
from objectives._profiles import (SMOLLM2_BUDGET, SMOLLM2_DENSE_PEAK, SMOLLM2_LLAMACPP_OVERHEAD, STORIES_BUDGET,
                                  STORIES_BUDGET_FRACTION, STORIES_DENSE_PEAK, STORIES_LLAMACPP_OVERHEAD,
                                  STORIES_LLAMACPP_TOKEN_S)

# The bundled model's config (compress/_bundled/stories260k), written out so the test needs no files.
STORIES = LlamaConfig(hidden_size=64, intermediate_size=172, num_hidden_layers=5, num_attention_heads=8,
                      num_key_value_heads=4, vocab_size=512, tie_word_embeddings=True, max_position_embeddings=512)


def test_phone_profile():
    p = objectives.get_profile("phone-12gb")
    assert p.memory_budget_bytes == 12 * 1024**3
    assert p.context_length == 4096 and p.bytes_per_weight == 2 and p.kv_bytes_per_value == 2
    assert p.runtime_overhead_bytes == 1024**3
    assert objectives.DEFAULT_PROFILE in objectives.PROFILES


def test_unknown_profile_suggests_a_name():
    with pytest.raises(ValueError, match=r"unknown device profile 'phone-12g' \(did you mean 'phone-12gb'\?\)"):
        objectives.get_profile("phone-12g")


def test_profile_instance_passes_through():
    p = objectives.get_profile("phone-12gb")
    assert objectives.get_profile(p) is p


def test_with_budget_overrides_only_the_budget():
    p = objectives.get_profile("phone-12gb")
    q = p.with_budget(4.0 * 1024**3)
    assert q.memory_budget_bytes == 4 * 1024**3
    assert q.to_dict() | {"memory_budget_bytes": p.memory_budget_bytes} == p.to_dict()
    assert p.memory_budget_bytes == 12 * 1024**3            # frozen: the registered one is untouched
    for bad in (0, -1, math.inf, "4GB"):
        with pytest.raises(ValueError, match="memory budget"):
            p.with_budget(bad)


def test_invalid_profile_fields_are_value_errors():
    base = objectives.get_profile("phone-12gb").to_dict()
    for field, bad in (("context_length", 0), ("prefill_chunk", -5), ("decode_bandwidth_bytes_per_s", 0.0),
                       ("runtime_overhead_bytes", -1), ("bytes_per_weight", 2.5)):
        with pytest.raises(ValueError, match=field):
            objectives.DeviceProfile(**{**base, field: bad})


def test_stories_budget_is_the_runtime_plus_a_fraction_of_the_dense_models_bytes():
    tiny = objectives.get_profile("stories260k-tiny")
    dense = objectives.estimate_memory(compress.shapes_from_config(STORIES), tiny)
    assert compress.shapes_from_config(STORIES).param_count() == 260_032
    assert dense.total_bytes - dense.overhead_bytes == STORIES_DENSE_PEAK       # the derivation in _profiles.py holds
    assert dense.overhead_bytes == STORIES_LLAMACPP_OVERHEAD == tiny.runtime_overhead_bytes
    assert tiny.memory_budget_bytes == STORIES_BUDGET == \
        STORIES_LLAMACPP_OVERHEAD + math.floor(STORIES_BUDGET_FRACTION * STORIES_DENSE_PEAK)
    assert not dense.fits                                          # the constraint binds on the dense model
    assert tiny.context_length == 512 and tiny.token_overhead_s == STORIES_LLAMACPP_TOKEN_S


def test_smollm2_budget_is_built_like_the_bundled_one():
    """SmolLM2-135M's shapes (the converted GGUF's config, written out): the dense model's own bytes as the
    derivation in _profiles.py states them, the budget = llama.cpp's fixed memory + 70 % of them, weights dominant."""
    smollm2 = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                          num_key_value_heads=3, head_dim=64, vocab_size=49152, tie_word_embeddings=True,
                          max_position_embeddings=8192)
    profile = objectives.get_profile("smollm2-135m-emulated")
    dense = objectives.estimate_memory(compress.shapes_from_config(smollm2), profile)
    assert dense.total_bytes - dense.overhead_bytes == SMOLLM2_DENSE_PEAK and dense.weight_bytes == 2 * 134_515_008
    assert profile.memory_budget_bytes == SMOLLM2_BUDGET == \
        SMOLLM2_LLAMACPP_OVERHEAD + math.floor(STORIES_BUDGET_FRACTION * SMOLLM2_DENSE_PEAK)
    assert not dense.fits and dense.weight_bytes > 0.8 * SMOLLM2_DENSE_PEAK
    assert (profile.context_length, profile.prefill_chunk, profile.flash_attention) == (2048, 64, True)


def test_runtime_costs_select_with_the_runtime_and_slow_decode():
    phone = objectives.get_profile("phone-12gb")
    assert set(phone.runtimes) == {"llama.cpp", "mlc"} and phone.runtime == "llama.cpp"
    custom = phone.with_runtime_cost("mlc", objectives.RuntimeCost(overhead_bytes=2 * 1024**3, token_overhead_s=0.01))
    assert custom.runtime == "mlc" and custom.runtime_overhead_bytes == 2 * 1024**3
    assert custom.for_runtime("llama.cpp").runtime_overhead_bytes == 1024**3     # the other runtime is untouched
    shapes = compress.shapes_from_config(STORIES)
    plain = objectives.decode_tokens_per_s(shapes, phone)
    assert objectives.decode_tokens_per_s(shapes, custom) == pytest.approx(1 / (0.01 + 1 / plain))
    with pytest.raises(ValueError, match="unknown runtime 'tvm'"):
        phone.for_runtime("tvm")


def test_profile_file_round_trip_and_bad_files(tmp_path):
    tiny = objectives.get_profile("stories260k-tiny")
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"profile": tiny.to_dict(), "calibration": []}))
    assert objectives.get_profile(str(path)) == tiny
    for text, message in (("[1]", "'profile' section"), ("{", "is not valid JSON"),
                          ('{"profile": {"name": "x", "colour": 1}}', "unknown fields")):
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            objectives.get_profile(str(path))
    with pytest.raises(ValueError, match="not found"):
        objectives.get_profile(str(tmp_path / "none.json"))
