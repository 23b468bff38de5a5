"""Calibration from the C4 the dense model predicts best (plan / space "calibration": {"select": f}).

On the bundled TinyStories model, text of its own domain has a far lower NLL than web text: ranking by the
dense model's NLL must find it, and blocks drawn with select < 1 must be text the model predicts better."""
import copy

import pytest
import torch

import compress
from compress import Plan

STORIES = [
    "Once upon a time, there was a little girl named Lily. She loved to play in the park with her mom. One day, "
    "she saw a big red ball under a tree. She ran to get it and laughed.",
    "Tom and his dog went to the beach. They played in the sand and found a shiny shell. Tom was very happy. "
    "He gave the shell to his mom and she smiled.",
    "One day, a small bird wanted to fly high in the sky. The bird tried and tried. At last it flew over the "
    "big tree and said, \"I did it!\"",
]


@pytest.fixture(scope="module")
def bundled():
    return compress.load_on_device(compress.resolve_model(compress.DEFAULT_MODEL))


def _nll(model, blocks: torch.Tensor) -> float:
    with torch.no_grad():
        return float(model(input_ids=blocks, labels=blocks).loss)


def test_the_documents_the_model_predicts_best_are_kept_in_their_order(bundled):
    model, tokenizer = bundled
    web = compress.texts("c4", split="train")[:3]
    docs = [web[0], STORIES[0], web[1], STORIES[1], web[2], STORIES[2]]
    assert compress.predictable_documents(model, tokenizer, docs, fraction=0.5, seq_len=64) == STORIES
    assert compress.predictable_documents(model, tokenizer, docs, fraction=1.0, seq_len=64) == docs
    assert compress.predictable_documents(model, tokenizer, docs, fraction=0.01, seq_len=64) in ([s] for s in STORIES)


def test_selected_calibration_blocks_are_text_the_model_predicts_better(bundled):
    model, tokenizer = bundled
    every = compress.calibration_tokens(tokenizer, {"samples": 16})
    chosen = compress.calibration_tokens(tokenizer, {"samples": 16, "select": 0.3}, model=model)
    assert chosen.shape == every.shape == (16, 128)
    assert not torch.equal(chosen, every)
    assert _nll(model, chosen) < _nll(model, every) - 0.3, (_nll(model, chosen), _nll(model, every))
    with pytest.raises(ValueError, match="pass model="):
        compress.calibration_tokens(tokenizer, {"select": 0.3})
    with pytest.raises(ValueError, match="fewer than the 4000 samples"):
        compress.calibration_tokens(tokenizer, {"samples": 4000, "select": 0.1}, model=model)


def test_a_selecting_plan_ranks_on_the_selected_blocks(bundled):
    model, tokenizer = bundled
    plan = Plan.uniform(model.config.num_hidden_layers, attn_keep=0.5, mlp_keep=0.5, importance="activation",
                        calibration={"samples": 16, "select": 0.3})
    tokens = compress.calibration_tokens(tokenizer, plan.calibration, model=model)
    own = compress.prune(copy.deepcopy(model), tokenizer, plan)                      # selects for itself
    given = compress.prune(copy.deepcopy(model), tokenizer, plan, calibration=tokens)
    every = compress.prune(copy.deepcopy(model), tokenizer, Plan.from_dict({**plan.to_dict(), "calibration":
                                                                            {"samples": 16}}))
    assert own.kept == given.kept
    assert own.kept != every.kept          # the selection changes what activation-aware ranking keeps


@pytest.mark.parametrize("calibration, message", [
    ({"select": 0}, r"calibration.select must be a fraction in \(0, 1\]"),
    ({"select": 1.5}, r"calibration.select must be a fraction"),
    ({"select": "most"}, r"calibration.select must be a fraction"),
    ({"sample": 8}, r"unknown calibration keys \['sample'\]"),
    ({"samples": 0}, r"calibration.samples must be an integer in \[1, 4096\]"),
    ({"samples": 10**9, "seq_len": 8}, r"calibration.samples must be an integer in \[1, 4096\]"),
    ({"samples": 4096, "seq_len": 4096}, r"more than the 2,097,152 calibration may read"),
    ({"hub": "yes"}, r"calibration.hub must be true or false"),
    ("all", r"calibration must be a mapping"),
])
def test_bad_calibration_settings_are_refused(calibration, message):
    with pytest.raises(ValueError, match=message):
        Plan.from_dict({"layers": [{}], "calibration": calibration})


def test_rankings_saved_before_select_existed_read_as_all_documents(tmp_path):
    old = {"samples": 64, "seq_len": 128, "seed": 0}
    compress.Rankings(scores={}, num_layers=1, calibration=old).save(tmp_path / "r.pt")
    assert compress.Rankings.load(tmp_path / "r.pt").calibration == compress.resolved_calibration({"select": 1.0})
