"""Held-out loss without a teacher (Track 2): every token scored exactly once whatever the window length,
normalised per byte, and the composite's no-teacher term."""
import math

import pytest
import torch
from torch import nn

import compress
import objectives
from objectives._heldout import heldout_documents, stream_nll


class Bigram(nn.Module):
    """Logits depend on the current token only, so the summed NLL must not depend on how the stream is windowed."""

    def __init__(self, vocab=512):
        super().__init__()
        torch.manual_seed(0)
        self.table = nn.Embedding(vocab, vocab)
        self.config = type("C", (), {"max_position_embeddings": 4096})()

    def forward(self, input_ids, use_cache=False):
        return type("Out", (), {"logits": self.table(input_ids)})()


@pytest.fixture(scope="module")
def tokenizer():
    return compress.load_model("stories260k")[1]


def reference_nll(model, tokenizer, docs):
    """Token by token over the whole stream, no windows."""
    ids = []
    for d in docs:
        ids += [tokenizer.bos_token_id] + tokenizer(d, add_special_tokens=False)["input_ids"]
    logp = model(torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
    targets = torch.tensor(ids[1:])
    keep = targets != tokenizer.bos_token_id
    return -logp[keep].gather(-1, targets[keep][:, None]).sum().item(), int(keep.sum())


@pytest.mark.parametrize("seq_len", [2, 7, 64, 4096])
def test_every_token_is_scored_once_whatever_the_window(seq_len, tokenizer):
    docs = heldout_documents("c4", 3000)
    model = Bigram()
    with torch.no_grad():
        ref, count = reference_nll(model, tokenizer, docs)
        nll, tokens = stream_nll(model, tokenizer, docs, seq_len=seq_len)
    assert tokens == count and nll == pytest.approx(ref, rel=1e-5)


def test_metrics_are_per_byte_and_per_token(tokenizer):
    model = compress.load_model("stories260k")[0]
    cand = objectives.Candidate(shapes=compress.shapes_from_config(model.config), model=model, tokenizer=tokenizer)
    obj = objectives.HeldoutObjective(seq_len=128)
    out = obj.evaluate(cand, objectives.EvalContext(), 0)
    assert set(out) == {m.name for m in obj.metrics()}
    for s in ("c4", "alpaca_zh"):
        docs = heldout_documents(s, 16_000)
        nll, tokens = stream_nll(model, tokenizer, docs, seq_len=128)
        assert out[f"{s}_perplexity"] == pytest.approx(math.exp(nll / tokens))
        assert out[f"{s}_nats_per_byte"] == pytest.approx(nll / sum(len(d.encode()) for d in docs))
    assert out["heldout_nats_per_byte"] == pytest.approx((out["c4_nats_per_byte"] + out["alpaca_zh_nats_per_byte"]) / 2)
    # held-out documents are never training documents
    assert not set(heldout_documents("c4", None)) & set(compress.texts("c4", split="train"))
    with pytest.raises(ValueError, match="'wikitext' is not allowed"):
        objectives.HeldoutObjective(sources=("wikitext",))


def test_track2_composite_has_no_teacher_terms():
    weights = objectives.ProxyWeights(accuracy=1.0, kl=0.0, log_ppl_ratio=0.0, nats_per_byte=2.0)
    assert weights.needs() == ["proxy_accuracy", "heldout_nats_per_byte"]
    score = objectives.composite_score({"proxy_accuracy": 0.3, "heldout_nats_per_byte": 1.5}, weights)
    assert score == pytest.approx(0.3 - 3.0)
    assert objectives.ProxyWeights().nats_per_byte == 0      # Track 1's composite is unchanged
