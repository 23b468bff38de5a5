"""Pruning removes weights for real and computes exactly what the dense model computes with the
same units zeroed, for every family, criterion and plan shape."""
import copy

import pytest
import torch

import compress
from compress import Plan
from tests.conftest import FAMILIES, tiny_model

IDS = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))
CALIB = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(2))

NON_UNIFORM = {"layers": [{"attn_keep": 0.5, "mlp_keep": 0.5},
                          {"attn_keep": 0.0, "mlp_keep": 0.3},     # attention removed
                          {"attn_keep": 0.0, "mlp_keep": 0.0},     # layer dropped
                          {"attn_keep": 0.75, "mlp_keep": 0.0}]}   # MLP removed


def zeroed_reference(dense, result: compress.PruneResult):
    """The dense model with the pruned units zeroed (o / down columns) and dropped layers skipped."""
    ref = copy.deepcopy(dense)
    adapter = compress.family_of(ref.config)
    head_dim = compress.shapes_from_config(ref.config).head_dim
    with torch.no_grad():
        for layer, kept in zip(adapter.layers(ref), result.kept):
            o = adapter.attention(layer)["o"]
            if kept["q_heads"] is not None:
                mask = torch.zeros(o.weight.shape[1], dtype=torch.bool)
                for h in kept["q_heads"]:
                    mask[h * head_dim:(h + 1) * head_dim] = True
                o.weight[:, ~mask] = 0
            down = adapter.mlp(layer)["out"]
            if kept["mlp_channels"] is not None:
                mask = torch.zeros(down.weight.shape[1], dtype=torch.bool)
                mask[kept["mlp_channels"]] = True
                down.weight[:, ~mask] = 0
    layers = adapter.layers(ref)
    ref.model.layers = torch.nn.ModuleList([layers[i] for i in result.layer_map])
    for i, layer in enumerate(ref.model.layers):
        layer.self_attn.layer_idx = i
    ref.config.num_hidden_layers = len(result.layer_map)
    return ref


def prune_copy(model, plan_dict, **kw):
    pruned = copy.deepcopy(model)
    result = compress.prune(pruned, None, Plan.from_dict(plan_dict), calibration=CALIB, **kw)
    return pruned, result


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("criterion", ["l1", "l2", "activation", "taylor"])
def test_pruned_equals_zeroed_dense_non_uniform(family, criterion):
    dense = tiny_model(family)
    pruned, result = prune_copy(dense, {**NON_UNIFORM, "importance": criterion})
    assert result.layer_map == [0, 1, 3]
    assert not result.shapes.is_uniform
    ref = zeroed_reference(dense, result)
    with torch.no_grad():
        assert torch.allclose(pruned(IDS).logits, ref(IDS).logits, atol=1e-4)
        # and pruning changed the function (the test would pass vacuously otherwise)
        assert not torch.allclose(pruned(IDS).logits, dense(IDS).logits, atol=1e-3)
    assert sum(p.numel() for p in pruned.parameters()) == result.params < result.base_params


@pytest.mark.parametrize("family", FAMILIES)
def test_query_heads_within_groups(family):
    dense = tiny_model(family)
    plan = {"attn_unit": "head", "layers": [{"attn_keep": 0.5, "mlp_keep": 1.0}] * 4}
    pruned, result = prune_copy(dense, plan)
    base = compress.shapes_from_config(dense.config)
    mha = base.layers[0].num_key_value_heads == base.layers[0].num_attention_heads
    for shape in result.shapes.layers:   # MHA (Phi-2): a query head is a whole KV group
        assert shape.num_key_value_heads == base.layers[0].num_key_value_heads // (2 if mha else 1)
        assert shape.num_attention_heads * 2 == base.layers[0].num_attention_heads
    with torch.no_grad():
        assert torch.allclose(pruned(IDS).logits, zeroed_reference(dense, result)(IDS).logits, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_keep_everything_reproduces_logits(family):
    dense = tiny_model(family)
    pruned, result = prune_copy(dense, {"layers": [{"attn_keep": 1, "mlp_keep": 1}] * 4})
    with torch.no_grad():
        assert torch.equal(pruned(IDS).logits, dense(IDS).logits)
    assert result.params == result.base_params


def test_uniform_plan_keeps_stock_config():
    dense = tiny_model("qwen2")
    pruned, result = prune_copy(dense, {"layers": [{"attn_keep": 0.5, "mlp_keep": 0.5}] * 4})
    cfg = pruned.config
    assert result.shapes.is_uniform and not hasattr(cfg, "layer_shapes")
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size, cfg.head_dim) == (4, 1, 48, 8)


def test_l1_removes_the_weakest_units():
    dense = tiny_model("llama")
    with torch.no_grad():
        layer = dense.model.layers[0]
        layer.mlp.gate_proj.weight[5] *= 1e-3   # channel 5 is nearly dead
        layer.mlp.up_proj.weight[5] *= 1e-3
        layer.mlp.down_proj.weight[:, 5] *= 1e-3
        layer.self_attn.k_proj.weight[8:16] *= 1e-3  # KV group 1 (head_dim 8) is nearly dead
    plan = {"layers": [{"attn_keep": 0.75, "mlp_keep": 95 / 96}] + [{"attn_keep": 1, "mlp_keep": 1}] * 3}
    _, result = prune_copy(dense, plan)
    assert 5 not in result.kept[0]["mlp_channels"] and len(result.kept[0]["mlp_channels"]) == 95
    assert result.kept[0]["q_heads"] == [0, 1, 4, 5, 6, 7]   # group 1 = query heads 2, 3


def test_generation_with_attention_free_first_layer_uses_cache_correctly():
    dense = tiny_model("llama")
    plan = {"layers": [{"attn_keep": 0, "mlp_keep": 1}] + [{"attn_keep": 0.5, "mlp_keep": 0.5}] * 3}
    pruned, _ = prune_copy(dense, plan)
    prompt = IDS[:1, :5]
    with torch.no_grad():
        cached = pruned.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True)
        uncached = pruned.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("bad, message", [
    ({"layers": [{"attn_keep": 1.5, "mlp_keep": 1}] * 4}, "attn_keep must be a number in \\[0, 1\\]"),
    ({"layers": [{"attn_keep": 1, "mlp_keep": -0.1}] * 4}, "mlp_keep must be a number"),
    ({"layers": [{"attn_keep": 1, "mlp_keep": 1}] * 3}, "plan has 3 layer entries but the model has 4"),
    ({"importance": "taylr", "layers": [{"attn_keep": 1, "mlp_keep": 1}] * 4}, "did you mean 'taylor'"),
    ({"attn_unit": "heads", "layers": [{"attn_keep": 1, "mlp_keep": 1}] * 4}, "attn_unit must be one of"),
    ({"layers": [{"attn_keep": 0, "mlp_keep": 0}] * 4}, "cannot drop every layer"),
    ({"layers": [{"attn": 1}] * 4}, "unknown layer keys"),
])
def test_bad_plans_are_refused(bad, message):
    dense = tiny_model("llama")
    with pytest.raises(ValueError, match=message):
        compress.prune(dense, None, Plan.from_dict(bad), calibration=CALIB)


def test_unsupported_architecture_names_supported_ones():
    from transformers import GPT2Config
    with pytest.raises(ValueError, match="supported families: .*llama.*phi.*qwen2|supported families"):
        compress.family_of(GPT2Config())


@pytest.mark.parametrize("family", FAMILIES)
def test_realised_shapes_predict_the_pruned_model(family):
    dense = tiny_model(family)
    plan = Plan.from_dict(NON_UNIFORM)
    predicted = plan.realised_shapes(compress.shapes_from_config(dense.config))
    _, result = prune_copy(dense, NON_UNIFORM)
    assert predicted == result.shapes and predicted.param_count() == result.params


def test_batched_left_padded_generation_with_attention_free_first_layer():
    """Padding masks are sized from layer 0's cache entry: an attention-free layer 0 must still report
    the right length, so batched generation equals one-at-a-time generation."""
    dense = tiny_model("llama")
    plan = {"layers": [{"attn_keep": 0, "mlp_keep": 1}, {"attn_keep": 0.5, "mlp_keep": 1},
                       {"attn_keep": 0, "mlp_keep": 0.5}, {"attn_keep": 1, "mlp_keep": 1}]}
    pruned, _ = prune_copy(dense, plan)
    prompts = [IDS[0, :7], IDS[1, :4]]
    batch = torch.zeros(2, 7, dtype=torch.long)
    mask = torch.zeros(2, 7, dtype=torch.long)
    for i, p in enumerate(prompts):  # left padding
        batch[i, 7 - len(p):], mask[i, 7 - len(p):] = p, 1
    with torch.no_grad():
        together = pruned.generate(batch, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
        for i, p in enumerate(prompts):
            alone = pruned.generate(p[None], max_new_tokens=6, do_sample=False, pad_token_id=0)
            assert torch.equal(together[i, 7:], alone[0, len(p):])
        out = pruned(input_ids=IDS[:1, :5], use_cache=True)
        out.past_key_values.batch_repeat_interleave(3)   # shared-prompt scoring repeats the cache
        assert out.past_key_values.get_seq_length() == 5
