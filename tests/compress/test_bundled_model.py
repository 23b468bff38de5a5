"""The bundled stories260K (compress/_bundled/stories260k) is the real pretrained llama2.c model, converted
faithfully: it tells llama2.c's greedy story, matches a run.c-style forward pass on the raw checkpoint,
tokenizes exactly like run.c's `encode`, and the converter reproduces it bit for bit."""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from compress import _llama2c
from tests.conftest import SHARED

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "compress" / "_bundled" / "stories260k"
MODELS = SHARED / "models"
CHECKPOINT, TOKENIZER = MODELS / "stories260K.bin", MODELS / "tok512.bin"

# llama2.c doc/stories260K.md: run.c's temperature-0 sample with no prompt.
LILY = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park."
TEXTS = [
    LILY,
    "One day, she saw a big, red ball. She wanted to play with it, but it was too high.",
    'Tom said, "Let\'s go to the park!" Mom smiled and said, "Yes, 2 hours."',
    "  leading spaces,  double  spaces and a trailing one ",
    "new\nlines\tand tabs",
    "caf\u00e9, na\u00efve, \u65e5\u672c, \U0001f642 \u2014 byte fallback",
    "a",
    "",
]

needs_shared = pytest.mark.skipif(not CHECKPOINT.is_file() or not TOKENIZER.is_file(),
                                  reason="../shared/models is not present")


# ---- reference implementations (independent of compress._llama2c) ----------------------------------


def load_llama2c_vocab(path: Path) -> tuple[list[bytes], list[float]]:
    data = path.read_bytes()
    offset, vocab, scores = 4, [], []
    while offset < len(data):
        score, n = struct.unpack_from("<fi", data, offset)
        vocab.append(data[offset + 8:offset + 8 + n])
        scores.append(score)
        offset += 8 + n
    return vocab, scores


def llama2c_encode(vocab: list[bytes], scores: list[float], text: str) -> list[int]:
    """run.c `encode(t, text, bos=1, eos=0)`: BOS, the " " dummy prefix, one token per UTF-8 character
    (or its bytes + 3 when it is not in the vocab), then repeatedly merge the leftmost adjacent pair whose
    concatenation is the highest-scoring vocab entry."""
    lookup = {piece: i for i, piece in enumerate(vocab)}
    tokens = [1]
    if text:
        tokens.append(lookup[b" "])
    for ch in text:
        raw = ch.encode("utf-8")
        tokens += [lookup[raw]] if raw in lookup else [b + 3 for b in raw]
    while True:
        best_score, best_id, best_idx = -1e10, -1, -1
        for i in range(len(tokens) - 1):
            merged = lookup.get(vocab[tokens[i]] + vocab[tokens[i + 1]])
            if merged is not None and scores[merged] > best_score:
                best_score, best_id, best_idx = scores[merged], merged, i
        if best_idx == -1:
            return tokens
        tokens[best_idx:best_idx + 2] = [best_id]


def llama2c_forward(path: Path, tokens: list[int]) -> np.ndarray:
    """run.c `forward` for every position, in float64 on the raw file: interleaved-pair RoPE, GQA,
    SwiGLU, RMSNorm eps 1e-5, classifier = token embedding. Returns logits [T, vocab]."""
    data = path.read_bytes()
    dim, hidden, n_layers, n_heads, n_kv, vocab_size, _ = struct.unpack_from("<7i", data)
    hs, kv_dim = dim // n_heads, n_kv * dim // n_heads
    flat, off = np.frombuffer(data, dtype="<f4", offset=28).astype(np.float64), 0

    def take(*shape):
        nonlocal off
        n = math.prod(shape)
        off += n
        return flat[off - n:off].reshape(shape)

    emb, rms_att = take(vocab_size, dim), take(n_layers, dim)
    wq, wk, wv = take(n_layers, dim, dim), take(n_layers, kv_dim, dim), take(n_layers, kv_dim, dim)
    wo, rms_ffn = take(n_layers, dim, dim), take(n_layers, dim)
    w1, w2, w3 = take(n_layers, hidden, dim), take(n_layers, dim, hidden), take(n_layers, hidden, dim)
    rms_final = take(dim)

    def rmsnorm(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-5) * w

    T = len(tokens)
    angle = np.arange(T)[:, None] / 10000.0 ** (np.arange(0, hs, 2) / hs)  # [T, hs/2]
    cos, sin = np.cos(angle), np.sin(angle)

    def rope(x):  # x [T, heads*hs]; rotate pairs (2j, 2j+1) of every head
        x = x.reshape(T, -1, hs // 2, 2)
        a, b = x[..., 0], x[..., 1]
        c, s = cos[:, None, :], sin[:, None, :]
        return np.stack([a * c - b * s, a * s + b * c], -1).reshape(T, -1)

    x = emb[tokens]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for layer in range(n_layers):
        xb = rmsnorm(x, rms_att[layer])
        q = rope(xb @ wq[layer].T).reshape(T, n_heads, hs)
        k = rope(xb @ wk[layer].T).reshape(T, n_kv, hs)
        v = (xb @ wv[layer].T).reshape(T, n_kv, hs)
        out = np.empty((T, n_heads, hs))
        for h in range(n_heads):
            kh = h // (n_heads // n_kv)
            att = q[:, h] @ k[:, kh].T / math.sqrt(hs) + mask
            att = np.exp(att - att.max(-1, keepdims=True))
            out[:, h] = (att / att.sum(-1, keepdims=True)) @ v[:, kh]
        x = x + out.reshape(T, dim) @ wo[layer].T
        xb = rmsnorm(x, rms_ffn[layer])
        gate = xb @ w1[layer].T
        x = x + (gate / (1 + np.exp(-gate)) * (xb @ w3[layer].T)) @ w2[layer].T
    return rmsnorm(x, rms_final) @ emb.T


# ---- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(BUNDLED)


@pytest.fixture(scope="module")
def model():
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(BUNDLED, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def reference_vocab():
    if not TOKENIZER.is_file():
        pytest.skip("../shared/models is not present")
    return load_llama2c_vocab(TOKENIZER)


@pytest.fixture(scope="module")
def reconverted(tmp_path_factory):
    if not CHECKPOINT.is_file() or not TOKENIZER.is_file():
        pytest.skip("../shared/models is not present")
    return _llama2c.convert(CHECKPOINT, TOKENIZER, tmp_path_factory.mktemp("conv") / "stories260k")


# ---- the bundled model is the real one --------------------------------------------------------------


def test_bundle_contents():
    names = {p.name for p in BUNDLED.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "README.md", "LICENSE"} <= names
    config = json.loads((BUNDLED / "config.json").read_text())
    assert (config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"],
            config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"],
            config["vocab_size"], config["max_position_embeddings"]) == (64, 172, 5, 8, 4, 8, 512, 512)
    assert config["tie_word_embeddings"] is True and config["rope_parameters"]["rope_theta"] == 10000.0
    assert (config["bos_token_id"], config["eos_token_id"], config["dtype"]) == (1, 2, "float32")
    readme = (BUNDLED / "README.md").read_text()
    assert _llama2c.STORIES260K_SHA256 in readme and "MIT" in readme


def test_greedy_story_from_bos(model, tokenizer):
    ids = torch.tensor([[tokenizer.bos_token_id]])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=40, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    text = tokenizer.decode(out[0], skip_special_tokens=True)
    assert text.startswith(LILY), text


@needs_shared
def test_logits_match_llama2c_forward(model, reference_vocab):
    """Catches a wrong q/k permutation or layout directly, not only through the sample text."""
    tokens = llama2c_encode(*reference_vocab, "Once upon a time, there was a big dog")
    ref = llama2c_forward(CHECKPOINT, tokens)
    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0].double().numpy()
    assert np.abs(logits - ref).max() < 1e-4  # fp32 vs float64: ~1e-5; unpermuted q/k: ~14


# ---- tokenizer ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_matches_llama2c_encode(tokenizer, reference_vocab, text):
    ids = tokenizer.encode(text)
    assert ids == llama2c_encode(*reference_vocab, text)
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_tokenizer_matches_llama2c_encode_on_every_piece(tokenizer, reference_vocab):
    """Every merge piece alone and followed by its mirror image: sensitive to the merge ranking in a way
    a few sentences are not (ranking merges by length instead of score passes the sentences above)."""
    words = [piece.decode("utf-8") for piece in reference_vocab[0][259:]]
    texts = words + [w + w[::-1] for w in words] + ["".join(words)]
    assert tokenizer(texts).input_ids == [llama2c_encode(*reference_vocab, t) for t in texts]


def test_tokenizer_specials(tokenizer, reference_vocab):
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, len(tokenizer)) == (0, 1, 2, 512)
    assert tokenizer.convert_ids_to_tokens(tokenizer.encode("Once upon a time")) == ["<s>", "▁Once", "▁upon", "▁a", "▁time"]
    # HF parses "<s>" in text as the special token (as Llama-2's tokenizer does); run.c never does.
    text = "a <s> b </s>"
    assert tokenizer.encode(text)[3] == 1
    assert tokenizer(text, split_special_tokens=True).input_ids == llama2c_encode(*reference_vocab, text)


@needs_shared
def test_read_llama2c_tokenizer_for_gguf(tokenizer):
    pieces = _llama2c.read_llama2c_tokenizer(TOKENIZER)
    assert len(pieces) == 512
    assert [p for p, _ in pieces[:4]] == ["<unk>", "<s>", "</s>", "<0x00>"] and pieces[258][0] == "<0xFF>"
    assert pieces[259] == ("▁t", 0.0) and pieces[260] == ("he", -1.0)
    assert not any(" " in p for p, _ in pieces)
    assert [p for p, _ in pieces] == tokenizer.convert_ids_to_tokens(list(range(512)))


# ---- the converter reproduces the bundle ----------------------------------------------------------


def test_reconversion_is_identical(reconverted, tokenizer):
    from safetensors.torch import load_file
    from transformers import AutoTokenizer
    bundled, fresh = load_file(BUNDLED / "model.safetensors"), load_file(reconverted / "model.safetensors")
    assert sorted(bundled) == sorted(fresh) and "lm_head.weight" not in fresh
    assert all(fresh[k].dtype == torch.float32 and torch.equal(bundled[k], fresh[k]) for k in bundled)
    def content(path):      # the writing transformers' version is stamped in, not part of the conversion
        data = json.loads(path.read_text())
        data.pop("transformers_version", None)
        return data
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert content(BUNDLED / name) == content(reconverted / name), name
    fresh_tok = AutoTokenizer.from_pretrained(reconverted)
    assert [fresh_tok.encode(t) for t in TEXTS] == [tokenizer.encode(t) for t in TEXTS]


def test_state_dict_loads_strictly():
    from transformers import LlamaForCausalLM
    if not CHECKPOINT.is_file():
        pytest.skip("../shared/models is not present")
    config, state = _llama2c.read_llama2c_checkpoint(CHECKPOINT)
    model = LlamaForCausalLM(config)
    model.load_state_dict(state, strict=True)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


# ---- bad input ------------------------------------------------------------------------------------------


@needs_shared
def test_wrong_or_truncated_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="not a llama2.c v0 checkpoint"):
        _llama2c.read_llama2c_checkpoint(TOKENIZER)  # a tokenizer.bin passed as the checkpoint
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(CHECKPOINT.read_bytes()[:500_000])
    with pytest.raises(ValueError, match="truncated"):
        _llama2c.read_llama2c_checkpoint(truncated)
    short = tmp_path / "short.bin"
    short.write_bytes(b"\x40\x00")
    with pytest.raises(ValueError, match="too short"):
        _llama2c.read_llama2c_checkpoint(short)
    v1 = tmp_path / "v1.bin"
    v1.write_bytes(b"ak42" + CHECKPOINT.read_bytes()[4:])
    with pytest.raises(ValueError, match="version 1/2"):
        _llama2c.read_llama2c_checkpoint(v1)
    with pytest.raises(ValueError, match="truncated|bad length|only"):
        tok = tmp_path / "tok.bin"
        tok.write_bytes(TOKENIZER.read_bytes()[:3000])
        _llama2c.read_llama2c_tokenizer(tok)


@needs_shared
def test_unverified_checkpoint_is_refused(tmp_path):
    tampered = tmp_path / "stories260K.bin"
    data = bytearray(CHECKPOINT.read_bytes())
    data[1000] ^= 1  # a weight bit: same size and header, different model
    tampered.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="no-verify"):
        _llama2c.convert(tampered, TOKENIZER, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.warns(UserWarning, match="UNVERIFIED"):
        out = _llama2c.convert(tampered, TOKENIZER, tmp_path / "out", verify=False)
    assert "UNVERIFIED" in (out / "README.md").read_text()


def test_cli_refuses_non_empty_output(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("x")
    args = ["--checkpoint", str(CHECKPOINT), "--tokenizer", str(TOKENIZER), "--out", str(tmp_path)]
    assert _llama2c.main(args) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
