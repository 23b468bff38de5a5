"""Export: GGUF files that llama.cpp (llama-cpp-python) loads on their own and that compute what the
PyTorch model computes; the HF / MLC directories; the format dispatcher."""
import json

import numpy as np
import pytest
import torch

import compress
from compress import LayerPlan, Plan
from compress._export import FORMATS, export_model
from compress._export_gguf import export_gguf
from compress._export_mlc import check_mlc, export_mlc
from tests.conftest import tiny_model

PROMPT = "Once upon a time, there was a little girl"
# Plans on the bundled model (5 layers, 8 heads / 4 KV heads, FFN 172).
VARIANTS = {
    "dense": None,
    "uniform": dict(layers=[(0.5, 0.75)] * 5),
    # attention removed in layer 0, MLP removed in layer 1, layer 2 dropped, KV groups 2 and 3, FFN 86 / 52
    "per_layer": dict(layers=[(0, 1), (1, 0), (0, 0), (0.5, 0.5), (0.75, 0.3)]),
    # per-head pruning (4 heads on 4 KV heads), attention-free middle layer, MLP removed in the LAST layer
    "per_head": dict(layers=[(1, 0.6), (0, 1), (0.25, 1), (1, 0.4), (0.5, 0)], attn_unit="head"),
}


def _build(out, plan_kwargs):
    model, tok = compress.load_model("stories260k")
    plan = None
    if plan_kwargs:
        layers = tuple(LayerPlan(attn_keep=a, mlp_keep=m) for a, m in plan_kwargs["layers"])
        plan = Plan(layers=layers, **{k: v for k, v in plan_kwargs.items() if k != "layers"})
        compress.prune(model, tok, plan)
    compress.save_pruned(model, tok, out, plan=plan, force=True)     # FP16, as the search writes them
    return out


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {name: _build(root / name, kw) for name, kw in VARIANTS.items()}


@pytest.fixture(scope="module")
def stories_tokenizer():
    return compress.load_model("stories260k")[1]


def _llama(path, **kw):
    llama_cpp = pytest.importorskip("llama_cpp")
    return llama_cpp.Llama(model_path=str(path), n_ctx=128, verbose=False, **kw)


def _exact_llama(path):
    """F32 K/V cache (GGML_TYPE_F32 = 0) and no flash attention: only the arithmetic order differs."""
    return _llama(path, type_k=0, type_v=0, flash_attn=False, logits_all=True)


def _last_logits(llm):
    return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))


def _arch(path):
    import gguf
    return gguf.GGUFReader(str(path)).fields["general.architecture"].contents()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_gguf_f32_logits_match_pytorch(name, checkpoints, tmp_path):
    model, tok = compress.load_model(checkpoints[name], dtype="float32")
    ids = tok(PROMPT)["input_ids"]
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    path = export_gguf(checkpoints[name], tmp_path / "m.gguf", dtype="f32")
    assert _arch(path) == ("llama" if name in ("dense", "uniform") else "deci")
    llm = _exact_llama(path)
    assert llm.tokenize(PROMPT.encode(), add_bos=True) == ids      # the file's vocabulary tokenizes like HF
    llm.eval(ids)
    delta = float(np.abs(np.asarray(llm.scores[:len(ids)]) - ref).max())
    llm.close()
    assert delta <= 1e-3, f"{name}: max |dlogit| {delta}"


@pytest.mark.parametrize("name", list(VARIANTS))
def test_gguf_f16_greedy_text_matches_pytorch(name, checkpoints, tmp_path):
    model, tok = compress.load_model(checkpoints[name], dtype="float32")
    ids = tok(PROMPT)["input_ids"]
    want = model.generate(torch.tensor([ids]), max_new_tokens=30, do_sample=False)[0, len(ids):].tolist()
    llm = _llama(export_gguf(checkpoints[name], tmp_path / "m.gguf"))     # F16 file, llama.cpp defaults
    llm.eval(ids)
    got = []
    for _ in range(30):
        got.append(int(np.argmax(_last_logits(llm))))
        llm.eval([got[-1]])
    llm.close()
    assert got == want, f"{name}: {tok.decode(got)!r} != {tok.decode(want)!r}"


@pytest.mark.parametrize("family,plan", [("qwen2", None), ("qwen2", [(0, 1), (0.5, 0), (1, 0.5), (0.5, 1)]),
                                         ("phi", None)])
def test_qwen2_and_phi_logits_match(family, plan, stories_tokenizer, tmp_path):
    """Random tiny models with random biases; the story tokenizer stands in (embeddings padded to 520
    rows: Qwen2's tokenizer class adds a token). Per-layer Qwen2 goes through deci with q/k/v biases."""
    model = tiny_model(family, vocab_size=520)
    if plan:
        compress.prune(model, stories_tokenizer, Plan(layers=tuple(LayerPlan(attn_keep=a, mlp_keep=m) for a, m in plan)))
    compress.save_pruned(model, stories_tokenizer, tmp_path / "ckpt", dtype=torch.float32)
    model, tok = compress.load_model(tmp_path / "ckpt", dtype="float32")
    ids = tok(PROMPT)["input_ids"]
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    path = export_gguf(tmp_path / "ckpt", tmp_path / "m.gguf", dtype="f32")
    assert _arch(path) == {"qwen2": "deci" if plan else "qwen2", "phi": "phi2"}[family]
    llm = _exact_llama(path)
    llm.eval(ids)
    delta = float(np.abs(np.asarray(llm.scores[:len(ids)]) - ref).max())
    llm.close()
    assert delta <= 1e-3


def test_llama3_rope_scaling_is_exported_as_rope_freqs(stories_tokenizer, tmp_path):
    """Llama 3.1's frequency-dependent RoPE scaling -> the rope_freqs tensor llama.cpp applies."""
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
    compress.save_pruned(tiny_model("llama", vocab_size=520, rope_parameters=rope), stories_tokenizer,
                         tmp_path / "ckpt", dtype=torch.float32)
    model, tok = compress.load_model(tmp_path / "ckpt", dtype="float32")
    assert model.config.rope_parameters["rope_type"] == "llama3"
    ids = tok(PROMPT)["input_ids"]
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    llm = _exact_llama(export_gguf(tmp_path / "ckpt", tmp_path / "m.gguf", dtype="f32"))
    llm.eval(ids)
    delta = float(np.abs(np.asarray(llm.scores[:len(ids)]) - ref).max())
    llm.close()
    assert delta <= 1e-4


def test_per_layer_phi_is_refused_with_the_reason(stories_tokenizer, tmp_path):
    model = tiny_model("phi", vocab_size=520)
    compress.prune(model, stories_tokenizer, Plan(layers=tuple(LayerPlan(attn_keep=a, mlp_keep=1.0)
                                                               for a in (1, 0.5, 1, 1))))
    compress.save_pruned(model, stories_tokenizer, tmp_path / "ckpt")
    with pytest.raises(ValueError, match="not exportable to GGUF yet: per-layer Phi-2"):
        export_gguf(tmp_path / "ckpt", tmp_path / "m.gguf")
    assert not (tmp_path / "m.gguf").exists()


def byte_level_pre_tokenizer(regex: str):
    """The HF pre-tokenizer llama.cpp calls `regex`: GPT-2's, Llama 3's split, or SmolLM's (every digit apart)."""
    from tokenizers import Regex, pre_tokenizers
    from compress._gguf_vocab import PRE_TOKENIZER_BY_REGEX
    if regex == "gpt-2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False)
    if regex == "smollm":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    pattern = next(k for k, v in PRE_TOKENIZER_BY_REGEX.items() if v == regex)
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


@pytest.mark.parametrize("regex", ["gpt-2", "llama-bpe", "smollm"])
def test_byte_level_bpe_vocab_tokenizes_like_hf(regex, tmp_path):
    """Llama 3 / Qwen2 / Phi-2 / SmolLM style byte-level BPE -> llama.cpp's gpt2 vocab with the matching
    pre-tokenizer (a Digits split before ByteLevel is SmolLM's `smollm`; taken for GPT-2's, numbers would merge)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    docs = [json.loads(line)["text"] for line in
            (compress._models.BUNDLED_MODELS / "data" / "c4_demo.jsonl").read_text().splitlines()[:100]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = byte_level_pre_tokenizer(regex)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(docs, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    compress.save_pruned(tiny_model("llama", vocab_size=512), hf, tmp_path / "ckpt")
    llm = _llama(export_gguf(tmp_path / "ckpt", tmp_path / "m.gguf"), vocab_only=True)
    import gguf
    assert gguf.GGUFReader(str(tmp_path / "m.gguf")).fields["tokenizer.ggml.pre"].contents() == regex
    samples = [d[:200] for d in docs[:30]] + ["don't I'll 1234567 3.14", "  two  spaces\n\nÄÖ – ‘quote’ 中文",
                                              "In 2024, 12,345 people paid $99.99 (x2) on 12/07."]
    for text in samples:
        assert llm.tokenize(text.encode(), add_bos=False) == hf(text, add_special_tokens=False)["input_ids"], text
    llm.close()


def test_gguf_refuses_bad_dtype_and_existing_output(checkpoints, tmp_path):
    with pytest.raises(ValueError, match="no quantization"):
        export_gguf(checkpoints["dense"], tmp_path / "m.gguf", dtype="q8_0")
    (tmp_path / "m.gguf").write_text("keep")
    with pytest.raises(ValueError, match="exists; pass --force"):
        export_gguf(checkpoints["dense"], tmp_path / "m.gguf")
    assert (tmp_path / "m.gguf").read_text() == "keep"


# ---- HF / MLC / dispatcher -------------------------------------------------------------------------
def test_mlc_check_names_the_layers_that_differ(checkpoints):
    with pytest.raises(ValueError) as err:
        check_mlc(compress.load_config(checkpoints["per_layer"]))
    message = str(err.value)
    assert "not MLC-compatible" in message and "layer 0: attention removed" in message
    assert "layer 1: MLP removed" in message and "heads 6 (not 4)" in message
    assert check_mlc(compress.load_config(checkpoints["uniform"])).is_uniform


def test_mlc_export_writes_weights_and_commands(checkpoints, tmp_path):
    out = export_mlc(checkpoints["uniform"], tmp_path / "mlc")
    assert (out / "hf" / "model.safetensors").is_file() and (out / "hf" / "tokenizer.json").is_file()
    commands = (out / "mlc_commands.sh").read_text()
    assert "mlc_llm convert_weight" in commands and "--quantization q0f16" in commands
    assert "mlc_llm gen_config" in commands and "--conv-template LM" in commands
    assert "mlc_llm compile" in commands and "--device android" in commands
    with pytest.raises(ValueError, match="not MLC-compatible"):
        export_mlc(checkpoints["per_layer"], tmp_path / "mlc2")
    assert not (tmp_path / "mlc2").exists()


def test_hf_export_is_fp16_and_refuses_a_non_empty_dir(checkpoints, tmp_path):
    out = export_model("stories260k", "hf", tmp_path / "hf")      # FP32 bundled model -> FP16 copy
    model, _ = compress.load_model(out, dtype="float16")
    assert next(model.parameters()).dtype == torch.float16
    with pytest.raises(ValueError, match="not empty"):
        export_model(checkpoints["per_layer"], "hf", tmp_path / "hf")
    copy = export_model(checkpoints["per_layer"], "hf", tmp_path / "hf", force=True)
    assert (copy / "modeling_pruned.py").is_file() and (copy / "plan.json").is_file()


def test_unknown_format_suggests_the_right_one(tmp_path):
    with pytest.raises(ValueError, match="did you mean 'gguf'"):
        export_model("stories260k", "ggfu", tmp_path / "x")
    assert FORMATS.names() == ["gguf", "hf", "mlc"]
