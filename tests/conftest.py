"""Shared fixtures: tiny random-weight models of every supported family, and the shared/ data path."""
import os
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test TEST_WORKERS=2`: one intra-op thread per worker (and per process it starts), or two workers'
    # OpenMP pools spin against each other on two cores
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# ../shared holds the full raw benchmark files and llama2.c checkpoints; a user's clone has none. The tests that
# need it skip without it; EDGEPRUNE_TEST_NO_SHARED=1 hides it, to run the suite as a plain clone would.
SHARED = REPO.parent / "shared"
if os.environ.get("EDGEPRUNE_TEST_NO_SHARED") == "1":
    SHARED = REPO / ".no-shared"          # never created


def tiny_config(family: str, **overrides):
    """Small configs with the real families' quirks: GQA (Llama), q/k/v biases (Qwen2),
    parallel block + LayerNorm + partial rotary + biases (Phi-2)."""
    from transformers import LlamaConfig, PhiConfig, Qwen2Config
    common = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=4, vocab_size=128,
                  max_position_embeddings=128)
    if family == "llama":
        cfg = LlamaConfig(num_attention_heads=8, num_key_value_heads=4, tie_word_embeddings=True, **common)
    elif family == "qwen2":
        cfg = Qwen2Config(num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False, **common)
    elif family == "phi":
        cfg = PhiConfig(num_attention_heads=8, num_key_value_heads=8, partial_rotary_factor=0.5,
                        tie_word_embeddings=False, **common)
    else:
        raise ValueError(family)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def tiny_model(family: str, seed: int = 0, **overrides):
    """Random weights AND random biases (HF initialises biases to zero, which would hide bias bugs)."""
    from transformers import AutoModelForCausalLM
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **overrides), attn_implementation="eager")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "layernorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@pytest.fixture
def shared_dir():
    if not SHARED.is_dir():
        pytest.skip("../shared is not present")
    return SHARED


FAMILIES = ("llama", "qwen2", "phi")
