"""Distillation data and fidelity metrics.

Training text: C4 and Chinese Alpaca only (the competition rules), tokenised, packed into seq_len
blocks per source, and mixed batch row by batch row with the configured weights. Held-out metrics
use a fixed batch of held-out C4 blocks (bundled documents 240-299, never trained or calibrated on).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._data import check_source, texts, token_blocks

DEFAULT_MIX = {"c4": 0.8, "alpaca_zh": 0.2}
MAX_BLOCKS_PER_SOURCE = 4096   # caps tokenising work; the bundled samples give far fewer at seq_len >= 64
HUB_DOCS = 2000                # documents streamed per source with hub=True
EVAL_CHUNK = 8                 # held-out blocks per forward pass


def check_mix(mix) -> dict[str, float]:
    """{"c4": w, "alpaca_zh": w} -> weights that sum to 1; any other dataset is refused (rules)."""
    if not isinstance(mix, dict) or not mix:
        raise ValueError(f'mix must be a non-empty dict like {DEFAULT_MIX}, got {mix!r}')
    for name, weight in mix.items():
        check_source(name)
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not weight >= 0:
            raise ValueError(f"mix weight for {name!r} must be a number >= 0, got {weight!r}")
    total = float(sum(mix.values()))
    if total <= 0:
        raise ValueError(f"mix weights must not all be 0, got {mix!r}")
    return {name: float(w) / total for name, w in mix.items() if w > 0}


class BlockMixer:
    """Random training batches: each row picks a source by weight, then a random packed block of it."""

    def __init__(self, tokenizer, mix: dict, *, seq_len: int, seed: int, hub: bool = False):
        if tokenizer is None:
            raise ValueError("distillation needs a tokenizer (the teacher's or the student's)")
        self.weights = check_mix(mix)
        self.names = list(self.weights)
        self.pools = {}
        for name in self.names:
            docs = texts(name, split="train", hub=hub, limit=HUB_DOCS if hub else None)
            self.pools[name] = token_blocks(tokenizer, docs, seq_len=seq_len, count=MAX_BLOCKS_PER_SOURCE)
        self._probs = torch.tensor([self.weights[n] for n in self.names], device="cpu")
        self._rng = torch.Generator(device="cpu").manual_seed(int(seed))

    def batch(self, batch_size: int) -> torch.Tensor:
        picks = torch.multinomial(self._probs, batch_size, replacement=True, generator=self._rng)
        rows = []
        for pick in picks.tolist():
            pool = self.pools[self.names[pick]]
            rows.append(pool[torch.randint(len(pool), (1,), generator=self._rng, device="cpu").item()])
        return torch.stack(rows)

    def describe(self) -> dict:
        return {name: {"weight": round(self.weights[name], 4), "blocks": len(self.pools[name])} for name in self.names}


def heldout_blocks(tokenizer, *, seq_len: int, count: int, hub: bool = False) -> torch.Tensor:
    """The fixed held-out C4 batch that every fidelity report is measured on."""
    if tokenizer is None:
        raise ValueError("distillation needs a tokenizer (the teacher's or the student's)")
    docs = texts("c4", split="heldout", hub=hub, limit=HUB_DOCS if hub else None)
    return token_blocks(tokenizer, docs, seq_len=seq_len, count=count)


@torch.no_grad()
def fidelity(student, teacher, blocks: torch.Tensor, *, device=None) -> dict:
    """Mean per-token KL(teacher || student) at T=1 over the full vocabulary, and student perplexity.

    `student` may be a DeepSpeed engine (ZeRO-3 parameters are only usable through its forward)."""
    kl_sum = nll_sum = 0.0
    kl_tokens = nll_tokens = 0
    for chunk in blocks.split(EVAL_CHUNK):
        if device is not None:
            chunk = chunk.to(device)
        s = student(input_ids=chunk, use_cache=False).logits.float()  # bf16/fp16 logits: KL in fp32
        t = teacher(input_ids=chunk, use_cache=False).logits.float()
        log_s, log_t = F.log_softmax(s, -1), F.log_softmax(t, -1)
        kl = (log_t.exp() * (log_t - log_s)).sum(-1)
        kl_sum += kl.sum().item()
        kl_tokens += kl.numel()
        nll_sum += F.cross_entropy(s[:, :-1].flatten(0, 1), chunk[:, 1:].flatten(), reduction="sum").item()
        nll_tokens += chunk[:, 1:].numel()
    return {"heldout_kl": kl_sum / kl_tokens, "heldout_ppl": math.exp(nll_sum / nll_tokens)}


# ---- losses ---------------------------------------------------------------------------------
def kd_loss(student_logits, teacher_logits, *, temperature: float, top_k: int = 0) -> torch.Tensor:
    """KL(teacher || student) at temperature T, times T^2 (keeps gradient size independent of T).

    top_k > 0: the teacher distribution is renormalised over its top-k logits and compared with the
    student's full-vocabulary log-probabilities at those ids (sparse KD: no [b, s, vocab] teacher
    probabilities for 100K+ vocabularies). The result is still >= 0 because the student's mass on
    the top-k ids is <= 1."""
    s = student_logits.float() / temperature
    t = teacher_logits.float() / temperature
    log_s = F.log_softmax(s, -1)
    if top_k and top_k < t.shape[-1]:
        t, idx = t.topk(top_k, dim=-1)
        log_s = log_s.gather(-1, idx)
    log_t = F.log_softmax(t, -1)
    return (log_t.exp() * (log_t - log_s)).sum(-1).mean() * temperature ** 2


def lm_loss(student_logits, ids) -> torch.Tensor:
    return F.cross_entropy(student_logits[:, :-1].float().flatten(0, 1), ids[:, 1:].flatten())


def hidden_loss(student_states: list, teacher_states: list, layer_map: list[int]) -> torch.Tensor:
    """MSE between student layer i's output and teacher layer layer_map[i]'s output (both before the
    final norm), divided by the teacher state's mean square and averaged over the student's layers.

    The division makes hidden_weight portable: raw residual-stream scale differs by orders of magnitude
    between models (1e-3 in a freshly initialised model, 1e2+ in late layers of 7B models), and so
    would the raw MSE next to the KL term."""
    if len(student_states) != len(layer_map):
        raise ValueError(f"layer_map has {len(layer_map)} entries but the student has {len(student_states)} layers")
    losses = []
    for s, j in zip(student_states, layer_map):
        t = teacher_states[j].float()
        losses.append(F.mse_loss(s.float(), t) / t.pow(2).mean().clamp_min(1e-12))
    return torch.stack(losses).mean()


class LayerOutputs:
    """Collects every decoder layer's output on each forward.

    Forward hooks, not `output_hidden_states=True`: transformers 5 returns the LAST layer's state
    after the final norm, so the last student/teacher pair would compare normed vs un-normed (or,
    with a dropped last layer, a normed student state against an un-normed teacher one)."""

    def __init__(self, layers):
        self.states: list = []
        self.enabled = True   # off during held-out evaluation
        self._hooks = [layer.register_forward_hook(self._hook) for layer in layers]

    def _hook(self, _module, _args, output):
        if self.enabled:
            self.states.append(output[0] if isinstance(output, tuple) else output)

    def take(self) -> list:
        states, self.states = self.states, []
        return states

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self.states = []
