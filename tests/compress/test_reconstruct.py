"""Reconstruction: a cut output projection refit by least squares on the dense model's calibration
activations reproduces the dense layer better than its plain slice, keeps the same units, and a trial
slicing the once-per-experiment Gram matrices gets exactly what a one-off prune computes."""
import copy
import pickle

import pytest
import torch

import compress
from compress import Plan
from compress import _reconstruct
from tests.compress.test_prune import CALIB, IDS, NON_UNIFORM
from tests.conftest import FAMILIES, tiny_model
from tests.device_guard import foreign_default_device


def _kl(dense, pruned, ids) -> float:
    with torch.no_grad():
        p = torch.log_softmax(dense(ids).logits.float(), -1)
        q = torch.log_softmax(pruned(ids).logits.float(), -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def test_least_squares_is_the_best_fit_on_the_kept_columns(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    mix = torch.randn(20, 20, generator=gen)
    x = mix @ torch.randn(20, 500, generator=gen)                  # correlated input features (rows)
    weight = torch.randn(6, 20, generator=gen)
    cols = torch.tensor([0, 3, 4, 7, 11, 12, 15, 19])
    monkeypatch.setattr(_reconstruct, "DAMP", 1e-9)
    got = _reconstruct.least_squares(weight, x @ x.t(), cols)
    want = torch.linalg.lstsq(x[cols].t().double(), (weight @ x).t().double()).solution.t().float()
    assert got.shape == (6, len(cols))
    assert torch.allclose(got, want, atol=1e-3, rtol=1e-3)
    err = lambda w: float((weight @ x - w @ x[cols]).pow(2).sum())   # noqa: E731
    assert err(got) < 0.75 * err(weight[:, cols])                 # the plain slice is far worse here
    assert err(got) < err(got + 0.01 * torch.randn(got.shape, generator=gen))    # a minimum
    # every column kept: the dense weight itself
    assert torch.allclose(_reconstruct.least_squares(weight, x @ x.t(), torch.arange(20)), weight, atol=1e-3)


def test_a_singular_gram_falls_back_to_more_damping():
    weight = torch.randn(3, 4)
    gram = torch.zeros(4, 4)                                       # units that never fired
    out = _reconstruct.least_squares(weight, gram, torch.tensor([1, 2]))
    assert torch.isfinite(out).all() and out.shape == (3, 2)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("unit", ["kv_group", "head"])
def test_reconstruction_keeps_the_units_and_moves_closer_to_the_dense_model(family, unit):
    dense = tiny_model(family)
    plain_plan = Plan.from_dict({**NON_UNIFORM, "importance": "activation", "attn_unit": unit})
    recon_plan = Plan.from_dict({**NON_UNIFORM, "importance": "activation", "attn_unit": unit, "reconstruct": True})
    plain, recon = copy.deepcopy(dense), copy.deepcopy(dense)
    a = compress.prune(plain, None, plain_plan, calibration=CALIB)
    b = compress.prune(recon, None, recon_plan, calibration=CALIB)
    assert a.kept == b.kept and a.shapes == b.shapes
    changed = []
    for name, p in plain.named_parameters():
        q = dict(recon.named_parameters())[name]
        if not torch.equal(p, q):
            changed.append(name)
    # only output projections' weights were refit: producers, biases, norms and embeddings are the slices
    assert changed and all(n.endswith(("o_proj.weight", "down_proj.weight", "dense.weight", "fc2.weight"))
                           for n in changed), changed
    # layer-wise (what least squares promises; end-to-end KL of a random tiny model may go either way):
    # every refit projection reproduces the dense projection's output on the dense inputs better
    inputs = _projection_inputs(dense, CALIB)
    adapter = compress.family_of(dense.config)
    head_dim = compress.shapes_from_config(dense.config).head_dim
    checked = 0
    for new_idx, base_idx in enumerate(a.layer_map):
        kept = a.kept[base_idx]
        for kind, units, width in (("attn", kept["q_heads"], head_dim), ("mlp", kept["mlp_channels"], 1)):
            if not units:
                continue
            cols = torch.tensor([u * width + j for u in units for j in range(width)])
            x, target = inputs[(kind, base_idx)]
            errors = [float((target - x[:, cols] @ _out(adapter, m.model.layers[new_idx], kind).weight.t()).pow(2).sum())
                      for m in (plain, recon)]
            assert errors[1] < errors[0], (kind, base_idx, errors)
            checked += 1
    assert checked >= 3


def _out(adapter, layer, kind):
    return adapter.attention(layer)["o"] if kind == "attn" else adapter.mlp(layer)["out"]


def _projection_inputs(model, ids) -> dict:
    """(kind, layer) -> (input X [tokens, in], the dense projection's output without bias [tokens, out])."""
    adapter = compress.family_of(model.config)
    seen, hooks = {}, []
    for idx, layer in enumerate(adapter.layers(model)):
        for kind in ("attn", "mlp"):
            module = _out(adapter, layer, kind)
            hooks.append(module.register_forward_pre_hook(_capture(seen, (kind, idx))))
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    return seen


def _capture(seen: dict, key):
    def hook(module, args):          # returns None: a pre-hook's return value would replace the inputs
        x = args[0].reshape(-1, args[0].shape[-1]).detach()
        seen[key] = (x, x @ module.weight.detach().t())
    return hook


def test_shipped_grams_give_what_a_one_off_prune_gives(tmp_path):
    dense = tiny_model("qwen2")
    once = compress.compute_rankings(copy.deepcopy(dense), None, criteria=["l1", "activation"], tokens=CALIB,
                                     grams=True)
    once.save(tmp_path / "rankings.pt")
    shipped = pickle.loads(pickle.dumps(compress.Rankings.load(tmp_path / "rankings.pt")))
    assert shipped.grams["mlp"][0].dtype == torch.float32
    for criterion in ("l1", "activation"):
        plan = Plan.from_dict({**NON_UNIFORM, "importance": criterion, "reconstruct": True})
        own, sliced = copy.deepcopy(dense), copy.deepcopy(dense)
        compress.prune(own, None, plan, calibration=CALIB)
        compress.prune(sliced, None, plan, rankings=shipped)
        with torch.no_grad():
            assert torch.allclose(sliced(IDS).logits, own(IDS).logits, atol=1e-5), criterion


def test_rankings_without_grams_refuse_a_reconstructing_plan():
    dense = tiny_model("llama")
    rankings = compress.compute_rankings(dense, None, criteria=["l1"], tokens=CALIB)
    with pytest.raises(ValueError, match="without the Gram matrices"):
        compress.prune(copy.deepcopy(dense), None, Plan.from_dict({**NON_UNIFORM, "reconstruct": True}),
                       rankings=rankings)
    with pytest.raises(ValueError, match="reconstruct must be true or false"):
        Plan.from_dict({**NON_UNIFORM, "reconstruct": "yes"})


@pytest.mark.parametrize("family", FAMILIES)
def test_reconstruction_creates_every_tensor_on_the_models_device(family):
    dense = tiny_model(family)
    expected = copy.deepcopy(dense)
    plan = Plan.from_dict({**NON_UNIFORM, "importance": "taylor", "reconstruct": True})
    compress.prune(expected, None, plan, calibration=CALIB)
    with foreign_default_device():
        compress.prune(dense, None, plan, calibration=CALIB)
    with torch.no_grad():
        assert torch.equal(dense(IDS).logits, expected(IDS).logits)


def test_reconstruction_halves_the_bundled_models_error_at_the_same_size():
    model, tokenizer = compress.load_on_device(compress.resolve_model(compress.DEFAULT_MODEL))
    ids = compress.token_blocks(tokenizer, compress.texts("c4", split="heldout"), seq_len=128, count=8)
    kls = {}
    for reconstruct in (False, True):
        pruned = copy.deepcopy(model)
        plan = Plan.uniform(model.config.num_hidden_layers, attn_keep=0.5, mlp_keep=0.6, importance="activation",
                            reconstruct=reconstruct)
        compress.prune(pruned, tokenizer, plan)
        kls[reconstruct] = _kl(model, pruned, ids)
    assert kls[True] < 0.75 * kls[False], kls


def test_gram_bytes_and_the_auto_setting():
    from search._driver import RECONSTRUCT_AUTO_BYTES, reconstructs
    bundled = compress.shapes_from_config(compress.load_config(compress.DEFAULT_MODEL))
    from transformers import Qwen2Config
    qwen = compress.shapes_from_config(Qwen2Config(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                                                   num_attention_heads=28, num_key_value_heads=4))   # Qwen2-7B
    layer = bundled.layers[0]
    assert compress.gram_bytes(bundled) == 4 * bundled.num_layers * (
        (layer.num_attention_heads * bundled.head_dim) ** 2 + layer.intermediate_size ** 2)
    assert compress.gram_bytes(qwen) > 20 * 2**30 > RECONSTRUCT_AUTO_BYTES
    assert reconstructs("auto", bundled) and not reconstructs("auto", qwen)
    assert reconstructs(True, qwen) and not reconstructs(False, bundled)


def test_grams_that_do_not_fit_are_refused_with_one_line(monkeypatch, tmp_path, capsys):
    import json
    from compress import _distill
    from search._cli import main
    monkeypatch.setattr(_distill, "available_memory", lambda kind: 1000)
    with pytest.raises(ValueError, match="reconstruction needs .* GB of Gram matrices"):
        compress.compute_rankings(tiny_model("llama"), None, criteria=["l1"], tokens=CALIB, grams=True)
    compress.compute_rankings(tiny_model("llama"), None, criteria=["l1"], tokens=CALIB)   # no Grams: no check
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"layers": [{"attn_keep": 0.5, "mlp_keep": 0.5}] * 5, "reconstruct": True}))
    capsys.readouterr()
    assert main(["prune", "--plan", str(plan), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: reconstruction needs"), err
    assert not (tmp_path / "out").exists()
    # launch refuses before anything is written (forcing reconstruction on the bundled model here)
    root = tmp_path / "runs"
    assert main(["launch", "--root", str(root), "--set", "space.reconstruct=true"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: reconstruction needs"), err
    assert not root.exists() or not any(root.iterdir())
