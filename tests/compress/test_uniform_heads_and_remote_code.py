"""Uniform plans whose kept head count does not divide the hidden size save and load both ways (our
loader and plain transformers with trust_remote_code); remote code runs only when it is byte for byte
what edgeprune wrote."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import compress
from compress import Plan
from tests.conftest import FAMILIES, tiny_model
from tests.compress.test_prune import CALIB, IDS

# tiny models: hidden 64; llama 8 heads / 4 KV, qwen2 8 / 2, phi 8 / 8 (MHA). Each plan keeps 6 heads.
SIX_HEADS = {"llama": {"attn_unit": "kv_group", "keep": 0.75},    # 3 of 4 KV groups x 2
             "qwen2": {"attn_unit": "head", "keep": 0.75},        # 3 of 4 query heads in each of 2 groups
             "phi": {"attn_unit": "kv_group", "keep": 0.75}}      # 6 of 8 heads


def _uniform_six_heads(family, tmp_path):
    model = tiny_model(family)
    spec = SIX_HEADS[family]
    plan = Plan.uniform(4, attn_keep=spec["keep"], mlp_keep=0.75, attn_unit=spec["attn_unit"])
    result = compress.prune(model, None, plan, calibration=CALIB)
    assert {s.num_attention_heads for s in result.shapes.layers} == {6} and 64 % 6
    out = compress.save_pruned(model, None, tmp_path / "ckpt", plan=plan, summary=result.summary())
    return model, result, out


@pytest.mark.parametrize("family", FAMILIES)
def test_uniform_plan_with_heads_not_dividing_hidden_saves_and_loads_both_ways(family, tmp_path):
    model, result, out = _uniform_six_heads(family, tmp_path)
    expected = model.float()(IDS).logits
    ours, _ = compress.load_model(out)
    remote = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.allclose(ours(IDS).logits, expected, atol=1e-5)
        assert torch.allclose(remote(IDS).logits, expected, atol=1e-5)
    assert compress.shapes_from_config(compress.load_config(out)) == result.shapes
    assert compress.check_remote_code(out) is True


def test_qwen2_7b_shapes_keeping_21_heads_write_a_loadable_config(tmp_path):
    """28 heads / 4 KV groups, 3 groups kept = 21 heads: 3584 / 21 is not an integer."""
    from transformers import AutoConfig, Qwen2Config
    from compress._prune import _write_shapes_to_config
    config = Qwen2Config(hidden_size=3584, num_attention_heads=28, num_key_value_heads=4, intermediate_size=18944,
                         num_hidden_layers=2, vocab_size=1000)
    base = compress.shapes_from_config(config)
    kept = Plan.uniform(2, attn_keep=0.75, mlp_keep=0.5).realise(base)
    assert kept[0].num_attention_heads == 21
    _write_shapes_to_config(config, base, kept)
    config.save_pretrained(tmp_path)
    assert compress.shapes_from_config(AutoConfig.from_pretrained(tmp_path)).layers == tuple(kept)


def test_tampered_remote_code_is_refused(tmp_path, capsys):
    _, _, out = _uniform_six_heads("llama", tmp_path)
    assert json.loads((out / "plan.json").read_text())["modeling_sha256"]
    modeling = out / "modeling_pruned.py"
    modeling.write_text(modeling.read_text() + "\nimport os  # an edit after saving\n")
    with pytest.raises(ValueError, match="modified after edgeprune wrote it"):
        compress.check_remote_code(out)
    # OpenCompass (the one loader that trusts remote code) refuses it before launching anything
    from search._cli import main
    work = tmp_path / "oc"
    assert main(["opencompass", "--model", str(out), "--limit", "1", "--work-dir", str(work)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "modified after edgeprune wrote it" in err[0]
    assert not work.exists()


def test_remote_code_not_written_by_us_is_refused(tmp_path):
    _, _, out = _uniform_six_heads("phi", tmp_path)
    config = json.loads((out / "config.json").read_text())
    config["auto_map"]["AutoConfig"] = "evil.EvilConfig"
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="did not write"):
        compress.check_remote_code(out)
    record = json.loads((out / "plan.json").read_text())
    del record["modeling_sha256"]
    (out / "plan.json").write_text(json.dumps(record))
    config["auto_map"].pop("AutoConfig")
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="no sha256"):
        compress.check_remote_code(out)
    assert compress.check_remote_code(tmp_path / "nothing-here") is False


def test_mlc_export_gets_stock_fields_back(tmp_path):
    """MLC reads only the stock config fields: the per-layer form of a uniform result is undone there."""
    _, result, out = _uniform_six_heads("llama", tmp_path)
    mlc = compress.export_model(out, "mlc", tmp_path / "mlc")
    config = json.loads((mlc / "hf" / "config.json").read_text())
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (6, 3, 8)
    assert config["intermediate_size"] == result.shapes.layers[0].intermediate_size
    assert "layer_shapes" not in config and "auto_map" not in config
