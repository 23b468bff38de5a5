"""Held-out language modelling on C4 and Alpaca-zh, without a teacher (Track 2's fidelity term).

Per source: the bundled held-out documents (C4 documents 240-299, the last 10 % of the Alpaca-zh sample;
never trained on, tokenizers included), whole documents up to `level_bytes[level]` UTF-8 bytes, each
preceded by BOS, concatenated and cut into windows of `seq_len` tokens (at most the model's context)
that overlap by one token, so every token after the first BOS is predicted exactly once. BOS targets
(document boundaries) are not scored.

    <source>_perplexity     exp(NLL / predicted tokens)  per token: comparable only under one tokenizer
    <source>_nats_per_byte  NLL / UTF-8 bytes of the text: comparable across tokenizers and vocabularies
    heldout_nats_per_byte   the mean over sources (what the Track 2 composite reads)

Trials of a Track 2 search differ in vocabulary, so only the per-byte numbers rank them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._base import OBJECTIVES, Candidate, EvalContext, Metric, Objective

SOURCES = ("c4", "alpaca_zh")
LEVEL_BYTES = (16_000, 64_000, None)      # None: every held-out document
SEQ_LEN = 256
CHUNK = 8                                  # windows per forward pass
AGGREGATE = "heldout_nats_per_byte"


def heldout_documents(source: str, max_bytes: int | None) -> list[str]:
    """Whole held-out documents of `source` up to `max_bytes` (at least one)."""
    from compress import texts
    docs, used = [], 0
    for doc in texts(source, split="heldout"):
        if docs and max_bytes is not None and used + len(doc.encode("utf-8")) > max_bytes:
            break
        docs.append(doc)
        used += len(doc.encode("utf-8"))
    return docs


@torch.no_grad()
def stream_nll(model, tokenizer, docs: list[str], *, seq_len: int) -> tuple[float, int]:
    """(summed NLL in nats, predicted tokens) over the BOS-separated stream of `docs`."""
    bos = tokenizer.bos_token_id
    ids: list[int] = []
    for doc in docs:
        ids += ([bos] if bos is not None else []) + tokenizer(doc, add_special_tokens=False, verbose=False)["input_ids"]
    step = seq_len - 1
    starts = list(range(0, max(1, len(ids) - 1), step))
    windows = torch.zeros(len(starts), seq_len, dtype=torch.long)
    labels = torch.full((len(starts), seq_len), -100, dtype=torch.long)
    for row, start in enumerate(starts):
        piece = torch.tensor(ids[start:start + seq_len])
        windows[row, :len(piece)] = piece
        labels[row, 1:len(piece)] = piece[1:]
    if bos is not None:
        labels[labels == bos] = -100
    device = next(model.parameters()).device
    nll, count = 0.0, int((labels != -100).sum())
    for w, lab in zip(windows.split(CHUNK), labels.split(CHUNK)):
        logits = model(input_ids=w.to(device), use_cache=False).logits[:, :-1].float()
        nll += F.cross_entropy(logits.flatten(0, 1), lab[:, 1:].flatten().to(device), ignore_index=-100,
                               reduction="sum").item()
    return nll, count


@OBJECTIVES.register("heldout")
class HeldoutObjective(Objective):
    name = "heldout"
    max_fidelity = len(LEVEL_BYTES) - 1

    def __init__(self, *, sources=SOURCES, seq_len: int = SEQ_LEN, level_bytes=LEVEL_BYTES):
        from compress import check_source
        self.sources = tuple(check_source(s) for s in sources)
        if not self.sources:
            raise ValueError("the held-out objective needs at least one source (c4, alpaca_zh)")
        if not isinstance(seq_len, int) or seq_len < 2:
            raise ValueError(f"seq_len must be an integer >= 2, got {seq_len!r}")
        self.seq_len, self.level_bytes = seq_len, tuple(level_bytes)

    def metrics(self) -> list[Metric]:
        out = []
        for s in self.sources:
            out.append(Metric(name=f"{s}_perplexity", unit="per token", higher_is_better=False))
            out.append(Metric(name=f"{s}_nats_per_byte", unit="nats/byte", higher_is_better=False))
        return out + [Metric(name=AGGREGATE, unit="nats/byte", higher_is_better=False)]

    def evaluate(self, candidate: Candidate, context: EvalContext, fidelity: int = 0) -> dict[str, float]:
        if not 0 <= fidelity <= self.max_fidelity:
            raise ValueError(f"fidelity must be 0..{self.max_fidelity}, got {fidelity}")
        if candidate.model is None or candidate.tokenizer is None:
            raise ValueError("the held-out objective needs a loaded model and tokenizer on the candidate")
        model = candidate.model
        seq_len = min(self.seq_len, int(getattr(model.config, "max_position_embeddings", self.seq_len)))
        was_training = model.training
        model.eval()
        result = {}
        try:
            for s in self.sources:
                docs = heldout_documents(s, self.level_bytes[fidelity])
                nll, tokens = stream_nll(model, candidate.tokenizer, docs, seq_len=seq_len)
                result[f"{s}_perplexity"] = math.exp(nll / tokens)
                result[f"{s}_nats_per_byte"] = nll / sum(len(d.encode("utf-8")) for d in docs)
        finally:
            model.train(was_training)
        result[AGGREGATE] = sum(result[f"{s}_nats_per_byte"] for s in self.sources) / len(self.sources)
        return result
