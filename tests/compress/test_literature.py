"""The literature baselines' criteria and cuts compute what their papers define (spaces/_baselines.py):
FLAP's standardized fluctuation and bias compensation, Minitron's activation aggregation, ShortGPT's block
influence; the compensated cut is saved, reloaded and run by llama.cpp with its biases."""
import copy

import numpy as np
import pytest
import torch

import compress
from compress import Plan
from tests.compress.test_prune import CALIB, IDS, NON_UNIFORM
from tests.conftest import FAMILIES, tiny_model


def _down_inputs(model, tokens):
    """Every layer's down_proj (fc2) input on `tokens`: [tokens, ffn] per layer."""
    adapter = compress.family_of(model.config)
    seen, hooks = {}, []
    for i, layer in enumerate(adapter.layers(model)):
        hooks.append(adapter.mlp(layer)["out"].register_forward_pre_hook(
            lambda _m, args, i=i: seen.setdefault(i, []).append(args[0].detach().reshape(-1, args[0].shape[-1]))))
    with torch.no_grad():
        model(input_ids=tokens)
    for h in hooks:
        h.remove()
    return {i: torch.cat(x) for i, x in seen.items()}


def test_fluctuation_is_flaps_standardized_weighted_variance():
    model = tiny_model("llama")
    rankings = compress.compute_rankings(model, None, criteria=["fluctuation"], tokens=CALIB)
    x = _down_inputs(model, CALIB)[1].double()
    weight = compress.family_of(model.config).mlp(model.model.layers[1])["out"].weight.double()
    metric = x.var(0, unbiased=False) * weight.pow(2).sum(0)                  # FLAP eq. 5 (WIFV)
    expected = (metric - metric.mean()) / metric.std()                        # eq. 7, per layer
    assert torch.allclose(rankings.layer_scores("fluctuation", "mlp", 1), expected, atol=1e-6)
    attn = rankings.layer_scores("fluctuation", "attn", 1, "kv_group")
    assert attn.shape == (4,) and abs(float(attn.mean())) < 1e-6            # group means of standardized features


def test_minitron_aggregates_by_l2_over_blocks_and_mean_over_tokens():
    model = tiny_model("llama")
    rankings = compress.compute_rankings(model, None, criteria=["minitron"], tokens=CALIB)
    x = _down_inputs(model, CALIB)[2].reshape(CALIB.shape[0], CALIB.shape[1], -1)
    expected = x.abs().mean(1).pow(2).sum(0).sqrt().double()
    assert torch.allclose(rankings.layer_scores("minitron", "mlp", 2), expected, rtol=1e-5)
    # mean over tokens, not over all positions of all blocks: a reordering across blocks changes the scores
    assert not torch.allclose(expected, x.abs().reshape(-1, x.shape[-1]).mean(0).double() *
                              CALIB.shape[0] ** 0.5, rtol=1e-3)


def test_block_influence_is_one_minus_cosine_of_layer_input_and_output():
    model = tiny_model("llama")
    rankings = compress.compute_rankings(model, None, criteria=["l1"], tokens=CALIB, influence=True)
    with torch.no_grad():
        hidden = model(input_ids=CALIB, output_hidden_states=True).hidden_states
    expected = [float((1 - torch.nn.functional.cosine_similarity(hidden[i], hidden[i + 1], dim=-1)).mean())
                for i in range(3)]          # the last hidden state is after the final norm: layers 0-2 only
    assert np.allclose(rankings.influence[:3], expected, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_bias_compensation_reproduces_the_dense_output_mean(family):
    """FLAP eq. 9: the cut MLP's output keeps the dense mean on the calibration tokens (its input is unchanged:
    only this layer's MLP is cut), which the plain cut does not."""
    dense = tiny_model(family)
    layers = [{"attn_keep": 1.0, "mlp_keep": 1.0}] * 4
    layers[1] = {"attn_keep": 1.0, "mlp_keep": 0.4}
    adapter = compress.family_of(dense.config)

    def out_mean(model):
        store, module = [], adapter.mlp(model.model.layers[1])["out"]
        h = module.register_forward_hook(lambda _m, _a, out: store.append(out.reshape(-1, out.shape[-1])))
        with torch.no_grad():
            model(input_ids=CALIB)
        h.remove()
        return torch.cat(store).mean(0)

    target = out_mean(dense)
    means = {}
    for compensate in (False, True):
        model = copy.deepcopy(dense)
        plan = Plan.from_dict({"layers": layers, "importance": "activation", "compensate": compensate})
        result = compress.prune(model, None, plan, calibration=CALIB)
        means[compensate] = out_mean(model)
        assert result.shapes.output_bias == (compensate and family != "phi")   # Phi has these biases already
        assert result.params == sum(p.numel() for p in model.parameters())
    compensated, plain = float((means[True] - target).abs().max()), float((means[False] - target).abs().max())
    assert compensated < 1e-6 + 1e-3 * float(target.abs().max()) and compensated < plain / 50


def test_compensated_reconstruction_fits_an_intercept():
    """With reconstruction too, the refit has an intercept: the same kept units, output closer to the dense."""
    dense = tiny_model("llama")
    x = _down_inputs(dense, CALIB)
    errors = {}
    for compensate in (False, True):
        model = copy.deepcopy(dense)
        plan = Plan.from_dict({**NON_UNIFORM, "importance": "activation", "reconstruct": True,
                               "compensate": compensate})
        result = compress.prune(model, None, plan, calibration=CALIB)
        down = compress.family_of(model.config).mlp(model.model.layers[0])["out"]
        ref = compress.family_of(dense.config).mlp(dense.model.layers[0])["out"](x[0])
        kept = torch.tensor(result.kept[0]["mlp_channels"])
        with torch.no_grad():
            errors[compensate] = float((down(x[0][:, kept]) - ref).pow(2).mean())
    assert errors[True] < errors[False]


def test_compensated_checkpoint_reloads_and_exports_to_llama_cpp(tmp_path):
    """The added biases are part of the checkpoint (per-layer modeling file) and of the GGUF (deci loads
    attn_output.bias and ffn_down.bias): llama.cpp computes the same logits."""
    llama_cpp = pytest.importorskip("llama_cpp")
    model, tokenizer = compress.load_model("stories260k")
    model = model.float()
    plan = Plan.from_dict({"layers": [{"attn_keep": 1, "mlp_keep": 1}, {"attn_keep": 0.5, "mlp_keep": 0.6},
                                      {"attn_keep": 0.75, "mlp_keep": 0.5}, {"attn_keep": 1, "mlp_keep": 0.8},
                                      {"attn_keep": 0.5, "mlp_keep": 0.4}],
                           "importance": "activation", "compensate": True, "calibration": {"samples": 8}})
    result = compress.prune(model, tokenizer, plan)
    folder = compress.save_pruned(model, tokenizer, tmp_path / "m", plan=plan, summary=result.summary(),
                                  dtype=torch.float32)
    back, _ = compress.load_model(str(folder))
    ids = IDS % 512
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        assert torch.equal(back.float()(input_ids=ids).logits, ref)
    assert compress.shapes_from_config(back.config).param_count() == result.params
    gguf = compress.export_gguf(folder, tmp_path / "m.gguf", dtype="f32")
    llm = llama_cpp.Llama(str(gguf), logits_all=True, verbose=False, n_ctx=64, type_k=0, type_v=0, flash_attn=False)
    row = ids[0].tolist()
    llm.eval(row)
    assert float(np.abs(np.asarray(llm.scores[:len(row)]) - ref[0].numpy()).max()) < 1e-3
    assert any(b.abs().max() > 0 for b in [m.bias for m in back.modules()
                                           if isinstance(m, torch.nn.Linear) and m.bias is not None])
