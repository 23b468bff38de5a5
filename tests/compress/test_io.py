"""Pruned checkpoints are complete HF directories that load both ways with the same logits."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import compress
from compress import Plan
from tests.conftest import FAMILIES, tiny_model
from tests.compress.test_prune import CALIB, IDS, NON_UNIFORM


def _pruned(family, plan_dict):
    model = tiny_model(family)
    plan = Plan.from_dict(plan_dict)
    result = compress.prune(model, None, plan, calibration=CALIB)
    return model, plan, result


@pytest.mark.parametrize("family", FAMILIES)
def test_non_uniform_round_trip_both_loaders(family, tmp_path):
    model, plan, result = _pruned(family, NON_UNIFORM)
    out = compress.save_pruned(model, None, tmp_path / "ckpt", plan=plan, summary=result.summary())
    assert (out / "modeling_pruned.py").is_file() and (out / "model.safetensors").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"].startswith("modeling_pruned.Pruned")
    assert len(config["layer_shapes"]) == 3 and config["dtype"] == "float16"
    record = compress.read_plan_record(out)
    assert record["plan"]["layers"][2] == {"attn_keep": 0.0, "mlp_keep": 0.0}
    assert record["realised"]["layer_map"] == [0, 1, 3] and record["realised"]["params"] == result.params

    expected = model.float()(IDS).logits  # the saved weights are the in-memory fp16 weights
    ours, _ = compress.load_model(out)    # project loader: no remote code
    remote = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.float32).eval()
    assert type(remote).__module__ != type(ours).__module__  # really the copied file, not our package
    with torch.no_grad():
        assert torch.allclose(ours(IDS).logits, expected, atol=1e-5)
        assert torch.allclose(remote(IDS).logits, expected, atol=1e-5)
    assert sum(p.numel() for p in ours.parameters()) == result.params


def test_uniform_plan_saves_stock_architecture(tmp_path):
    model, plan, result = _pruned("llama", {"layers": [{"attn_keep": 0.5, "mlp_keep": 0.5}] * 4})
    out = compress.save_pruned(model, None, tmp_path / "ckpt", plan=plan, summary=result.summary())
    assert not (out / "modeling_pruned.py").exists()
    assert "auto_map" not in json.loads((out / "config.json").read_text())
    stock = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.allclose(stock(IDS).logits, model.float()(IDS).logits, atol=1e-5)


def test_refuses_non_empty_dir_and_keeps_its_content(tmp_path):
    model, plan, result = _pruned("llama", NON_UNIFORM)
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty; pass --force"):
        compress.save_pruned(model, None, target, plan=plan)
    assert (target / "precious.txt").read_text() == "keep me"
    compress.save_pruned(model, None, target, plan=plan, force=True)
    assert not (target / "precious.txt").exists() and (target / "config.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary leftovers


def test_quantized_and_bad_dtypes_refused(tmp_path):
    with pytest.raises(ValueError, match="FP16 or FP32"):
        compress.check_dtype("int8")
    with pytest.raises(ValueError, match="FP16 or FP32"):
        compress.check_dtype(torch.bfloat16)
    model = tiny_model("llama")
    model.config.quantization_config = {"quant_method": "gptq", "bits": 4}
    model.save_pretrained(tmp_path / "q")
    with pytest.raises(ValueError, match="quantized checkpoint \\(gptq\\) refused"):
        compress.load_model(tmp_path / "q")


def test_model_names(tmp_path):
    assert compress.resolve_model("qwen-7b") == "Qwen/Qwen2-7B-Instruct"
    assert compress.resolve_model("someorg/some-model") == "someorg/some-model"
    with pytest.raises(ValueError, match="did you mean 'qwen-7b'"):
        compress.resolve_model("qwen-7")
    with pytest.raises(ValueError, match="model directory not found"):
        compress.resolve_model(str(tmp_path / "missing"))


def test_uncached_hub_model_offline_gives_one_clear_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="not in the local Hugging Face cache.*huggingface-cli download microsoft/phi-2"):
        compress.load_config("phi-2")


def test_saved_tokenizer_config_names_a_class_transformers_4_knows(tmp_path):
    """transformers 5 writes "TokenizersBackend", which transformers 4 (OpenCompass 0.3.1's era) cannot load."""
    import json

    from transformers import AutoTokenizer
    model, tok = compress.load_model("stories260k")
    out = compress.save_pruned(model, tok, tmp_path / "m")
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert "is_local" not in config and "local_files_only" not in config
    again = AutoTokenizer.from_pretrained(out)
    text = "Once upon a time, a little fox"
    assert again(text)["input_ids"] == tok(text)["input_ids"]
