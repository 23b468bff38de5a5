"""GGUF files as --model: converted once into an FP16 HF folder keyed by the file's sha256, atomically and under a
lock; the same model comes back (weights, RoPE order, tied embeddings, tokenizer); bad files are one line and
write nothing. SmolLM2-135M (the registry's `smollm2-135m`) through conversion, one prune and KL on one block."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import compress
from compress import LayerPlan, Plan
from compress._export_gguf import export_gguf
from compress._gguf_input import SOURCE_FILE, gguf_model_dir
from compress._models import MODELS, ModelSpec
from tests.conftest import REPO, tiny_model

PROMPT = "Once upon a time, there was a little girl named Lily. In 2024 she was 7."


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("EDGEPRUNE_CACHE", str(root))
    return root


@pytest.fixture(scope="module")
def stories_f16_gguf(tmp_path_factory):
    return export_gguf("stories260k", tmp_path_factory.mktemp("gguf") / "stories.gguf")


def quantize_q8(src, dst):
    """A copy of GGUF `src` with every matrix whose rows are whole Q8_0 blocks stored as Q8_0 (as llama.cpp's
    quantize writes them), the rest as is: a quantized file to convert."""
    import gguf
    reader = gguf.GGUFReader(str(src))
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(str(dst), arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            writer.add_array(key, field.contents())
        else:
            writer.add_key_value(key, field.contents(), kind)
    for t in reader.tensors:
        data = np.asarray(t.data)
        shape = tuple(int(x) for x in reversed(t.shape))
        data = data.reshape(shape)
        if data.ndim == 2 and shape[-1] % 32 == 0:
            q = gguf.quants.quantize(data.astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(t.name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(t.name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def _logits(name, text=PROMPT):
    model, tok = compress.load_model(name, dtype="float32")
    ids = tok(text)["input_ids"]
    with torch.no_grad():
        return ids, model(torch.tensor([ids])).logits[0]


def test_f16_gguf_converts_back_to_the_same_weights(stories_f16_gguf, cache, capfd):
    """The bundled model -> F16 GGUF (q/k permuted to llama.cpp's order, tied embeddings) -> FP16 folder: every
    weight exactly as the FP16 checkpoint holds it, the same tokens, no dequantization note."""
    folder = compress.resolve_model(str(stories_f16_gguf))
    assert capfd.readouterr().err == ""                       # F16: nothing dequantized, nothing to say
    assert folder.startswith(str(cache)) and json.loads((cache / "gguf" / os.path.basename(folder) / SOURCE_FILE)
                                                        .read_text())["dequantized"] is False
    dense, tok = compress.load_model("stories260k", dtype="float16")
    back, back_tok = compress.load_model(str(stories_f16_gguf), dtype="float16")
    assert back.config.tie_word_embeddings and back.lm_head.weight.data_ptr() == back.model.embed_tokens.weight.data_ptr()
    want, got = dense.state_dict(), back.state_dict()
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key
    for text in (PROMPT, "  spaces,\ttabs and ÄÖ 中文"):
        assert back_tok(text)["input_ids"] == tok(text)["input_ids"]


def test_quantized_gguf_is_dequantized_with_one_note_and_converted_once(stories_f16_gguf, cache, tmp_path, capfd):
    q8 = quantize_q8(stories_f16_gguf, tmp_path / "stories.q8_0.gguf")
    folder = gguf_model_dir(q8)
    notes = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert len(notes) == 1 and notes[0].startswith("note: stories.q8_0.gguf stores quantized weights (Q8_0 x")
    source = json.loads((folder / SOURCE_FILE).read_text())
    assert source["dequantized"] and source["tensor_types"]["Q8_0"] > 0
    ids, ref = _logits("stories260k")
    ids_q, got = _logits(str(q8))
    assert ids_q == ids
    assert float((got - ref).abs().max()) < 0.1 * float(ref.abs().max())     # Q8_0: close, not equal
    assert torch.equal(got.argmax(-1), ref.argmax(-1))
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    copy = tmp_path / "renamed.gguf"
    copy.write_bytes(q8.read_bytes())
    capfd.readouterr()
    assert gguf_model_dir(copy) == folder                    # keyed by content: reused, not rewritten
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp and capfd.readouterr().err == ""


def test_two_processes_converting_at_once_share_one_conversion(stories_f16_gguf, cache, tmp_path):
    q8 = quantize_q8(stories_f16_gguf, tmp_path / "race.gguf")
    code = "import sys, compress; print(compress.resolve_model(sys.argv[1]))"
    env = {**os.environ, "PYTHONPATH": str(REPO), "EDGEPRUNE_CACHE": str(cache)}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(q8)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env, cwd=REPO) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert outs[0][0] == outs[1][0]
    assert sum(err.count("note:") for _, err in outs) == 1     # the second waited, then reused the first's folder
    entries = sorted(p.name for p in (cache / "gguf").iterdir())
    assert len([e for e in entries if not e.endswith(".lock")]) == 1, entries     # no temporary left behind


def byte_level_tokenizer(regex: str):
    """A small byte-level BPE trained on bundled C4 with llama.cpp's `regex` pre-tokenizer (Qwen2's, SmolLM's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    from tests.compress.test_export import byte_level_pre_tokenizer
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = byte_level_pre_tokenizer(regex)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(compress.texts("c4")[:100], trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


@pytest.mark.parametrize("family,regex", [("qwen2", "qwen2"), ("llama", "smollm")])
def test_byte_level_gguf_round_trips(family, regex, cache, tmp_path):
    """Qwen2 (q/k/v biases, untied head, rotate_half order kept) and a Llama with SmolLM's digit-splitting
    tokenizer: the same weights and the same tokens back, on text full of numbers and spaces."""
    tok = byte_level_tokenizer(regex)
    tok.chat_template = "{% for m in messages %}<|endoftext|>{{ m['content'] }}{% endfor %}"
    compress.save_pruned(tiny_model(family, vocab_size=512), tok, tmp_path / "ckpt", dtype=torch.float16)
    back, back_tok = compress.load_model(str(export_gguf(tmp_path / "ckpt", tmp_path / "m.gguf")), dtype="float16")
    assert back_tok.chat_template == tok.chat_template             # exported with the vocabulary, read back
    want = compress.load_model(tmp_path / "ckpt", dtype="float16")[0].state_dict()
    assert back.config.model_type == family
    for key, value in back.state_dict().items():
        assert torch.equal(value, want[key]), key
    for text in compress.texts("c4", split="heldout")[:20] + ["In 2024, 12,345 people paid $99.99 on 12/07.",
                                                              "  two  spaces\n\nÄÖ 中文 x1y22"]:
        assert back_tok(text, add_special_tokens=False)["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("case", ["truncated", "foreign", "empty", "missing", "per_layer", "phi2"])
def test_bad_gguf_files_are_one_line_and_write_nothing(case, stories_f16_gguf, cache, tmp_path):
    path = tmp_path / f"{case}.gguf"
    expect = {"truncated": "is truncated", "foreign": "is not a GGUF file", "empty": "not a readable GGUF file",
              "missing": "GGUF file not found", "per_layer": "architecture 'deci' is not supported",
              "phi2": "architecture 'phi2' is not supported"}[case]
    tok = compress.load_model("stories260k")[1]
    if case == "truncated":
        path.write_bytes(stories_f16_gguf.read_bytes()[:300_000])
    elif case == "foreign":
        path.write_bytes(b"PK\x03\x04 not a model" * 100)
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "per_layer":
        model, _ = compress.load_model("stories260k")
        compress.prune(model, tok, Plan(layers=tuple(LayerPlan(attn_keep=a, mlp_keep=1.0) for a in (1, .5, 1, 1, 1))))
        compress.save_pruned(model, tok, tmp_path / "ckpt")
        export_gguf(tmp_path / "ckpt", path)
    elif case == "phi2":
        compress.save_pruned(tiny_model("phi", vocab_size=520), tok, tmp_path / "ckpt")
        export_gguf(tmp_path / "ckpt", path)
    with pytest.raises(ValueError, match=expect) as err:
        compress.resolve_model(str(path))
    assert "\n" not in str(err.value)
    assert not cache.exists() or not any((cache / "gguf").glob("*/"))


def test_packaged_model_missing_or_changed_says_what_to_do(stories_f16_gguf, cache, monkeypatch):
    monkeypatch.setitem(MODELS._items, "absent-model", ModelSpec(
        source="no_such_pkg_edgeprune/m.gguf", package="no_such_pkg_edgeprune", install="pip install no-such==1.0",
        description="test"))
    with pytest.raises(ValueError, match=r"needs the no-such-pkg-edgeprune package, which is not installed: "
                                         r"pip install no-such==1\.0"):
        compress.resolve_model("absent-model")
    with pytest.raises(ValueError, match="has sha256 .* expected 0000"):
        gguf_model_dir(stories_f16_gguf, sha256="0" * 64, name="x")
    assert not cache.exists()


def test_local_model_dir_takes_every_model_form():
    """Tools that read files (OpenCompass) get a folder for a registry name too, not '<cwd>/stories260k'."""
    assert compress.local_model_dir("stories260k") == compress._models.BUNDLED_MODELS / "stories260k"
    with pytest.raises(ValueError, match="did you mean 'stories260k'"):
        compress.local_model_dir("stories26k")


# ---- SmolLM2-135M: the real model, through the conversion cache -----------------------------------
@pytest.fixture(scope="session")
def smollm2():
    try:
        compress._models.packaged_file("smollm2-135m", MODELS.get("smollm2-135m"))
    except ValueError as err:
        pytest.skip(str(err))
    return compress.resolve_model("smollm2-135m")      # the user's cache: converted once, then reused


def test_smollm2_converts_prunes_and_scores_kl(smollm2, tmp_path):
    from objectives import TeacherCache
    config = compress.load_config(smollm2)
    assert (config.model_type, config.num_hidden_layers, config.vocab_size, config.tie_word_embeddings) == \
        ("llama", 30, 49152, True)
    assert compress.shapes_from_config(config).param_count() == 134_515_008
    model, tok = compress.load_model("smollm2-135m")
    assert tok("In 2024")["input_ids"] == [788, 216, 34, 32, 34, 36]          # SmolLM splits every digit
    tokens = compress.token_blocks(tok, compress.texts("c4", split="heldout"), seq_len=128, count=1)
    teacher = TeacherCache.build(model, tok, tokens=tokens, level_blocks=(1,))
    # activation-aware: L1 on weights removes layer 0's few massive-activation MLP channels (10 % of that one MLP by
    # L1: KL 3.4 nats; by activation, 10 % of every MLP: 0.29)
    # (dropping the last of the 30 layers alone: 2.0; a broken conversion or cut: far above 5)
    plan = Plan(layers=tuple(LayerPlan(attn_keep=2 / 3 if i == 14 else 1.0, mlp_keep=0.9) for i in range(29))
                + (LayerPlan(attn_keep=0, mlp_keep=0),), importance="activation",     # the last of 30 layers dropped
                calibration={"samples": 8, "seq_len": 64})
    result = compress.prune(model, tok, plan)
    assert model.config.num_hidden_layers == 29 and result.params < 0.95 * 134_515_008
    kl = teacher.score(model, tok)["kl_to_teacher"]
    assert 0.5 < kl < 4.0, kl
