"""Distance from the dense teacher: KL(teacher || candidate) per next-token prediction, and perplexity,
on held-out C4 (documents the pruning / distillation calibration never sees).

The teacher's side is computed ONCE per experiment (`TeacherCache.build`, saved with an atomic write) and
loaded by every trial, so a trial runs only its own model. Per position the cache keeps the log-sum-exp of
the teacher's logits and either all logits (vocabulary <= `EXACT_VOCAB`: the KL is exact) or the top-k
logits. With top-k the KL is that of the two distributions coarsened to k + 1 outcomes: the teacher's
top-k tokens plus one "tail" bucket holding the rest of each distribution's mass,

    KL ~= sum_{i in topk} p_i log(p_i / q_i) + p_tail log(p_tail / q_tail),
    p_tail = 1 - sum_topk p_i,   q_tail = the candidate's mass outside the teacher's top-k.

Merging outcomes can only lose information, so this is a lower bound on the full KL; it is exact when
the candidate's tail is a scaled copy of the teacher's, and the gap is small once the teacher's top-k
holds nearly all its mass (k = 64 typically leaves well under 1 % in the tail for 8B-scale models).

Fidelity level k uses the first `level_blocks[k]` blocks of `seq_len` tokens (nested, like the proxy); a
fidelity ladder rung may ask for any number of blocks instead (`blocks=`).

Noise: next to each mean, its standard error by batch means (per-token values are autocorrelated within a
document, so the positions are cut into windows of `SE_WINDOW` tokens and the SE is that of the window
means): `kl_to_teacher_se`, and `log_ppl_ratio_se` for log(perplexity / teacher perplexity), the mean of
the per-token NLL differences. The composite score weights each term by its reliability (_composite.py).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ._base import OBJECTIVES, Candidate, EvalContext, Metric, Objective

TOP_K = 64
EXACT_VOCAB = 4096                 # store the full distribution up to this vocabulary size
SEQ_LEN = 256
LEVEL_BLOCKS = (2, 4, 8)           # blocks of SEQ_LEN held-out tokens per fidelity level
LOGITS_PER_FORWARD = 1 << 25       # floats of logits materialised at once (chunking for big vocabularies)
SE_WINDOW = 32                     # tokens per batch mean for standard errors


def vocab_fingerprint(tokenizer) -> str | None:
    if tokenizer is None or not hasattr(tokenizer, "get_vocab"):
        return None
    items = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


def _vocab(model) -> int:
    head = model.get_output_embeddings()
    return int(head.weight.shape[0]) if head is not None else int(model.config.vocab_size)


def _chunks(model, tokens: torch.Tensor):
    """Yield (start, log-softmax of logits predicting tokens[:, 1:]) in chunks of blocks."""
    device = next(model.parameters()).device
    vocab = _vocab(model)
    step = max(1, LOGITS_PER_FORWARD // (tokens.shape[1] * vocab))
    with torch.no_grad():
        for start in range(0, tokens.shape[0], step):
            logits = model(input_ids=tokens[start:start + step].to(device)).logits[:, :-1]
            yield start, logits.float().cpu()


@dataclass(kw_only=True)
class TeacherCache:
    tokens: torch.Tensor               # [blocks, seq_len] token ids
    values: torch.Tensor               # [blocks, seq_len - 1, k or vocab] teacher logits
    indices: torch.Tensor | None       # [blocks, seq_len - 1, k] vocabulary ids of `values`; None = exact
    lse: torch.Tensor                  # [blocks, seq_len - 1] log-sum-exp of the teacher logits
    nll: torch.Tensor                  # [blocks, seq_len - 1] teacher NLL of the actual next token
    vocab_size: int
    vocab_hash: str | None = None
    level_blocks: tuple[int, ...] = LEVEL_BLOCKS
    meta: dict = field(default_factory=dict)
    # the teacher's own proxy credits per item, "mode/level" -> {task: [credit, ...]} (filled by the search
    # driver for the ladder's proxy rungs): a trial's accuracy change is measured against them, item by item
    proxy: dict = field(default_factory=dict)

    @property
    def exact(self) -> bool:
        return self.indices is None

    def blocks(self, level: int, blocks: int | None = None) -> int:
        if blocks is not None:
            if not isinstance(blocks, int) or blocks < 1:
                raise ValueError(f"blocks must be a positive integer, got {blocks!r}")
            return min(blocks, self.tokens.shape[0])
        if not 0 <= level < len(self.level_blocks):
            raise ValueError(f"fidelity must be 0..{len(self.level_blocks) - 1}, got {level}")
        return min(self.level_blocks[level], self.tokens.shape[0])

    def teacher_perplexity(self, level: int, blocks: int | None = None) -> float:
        return math.exp(float(self.nll[:self.blocks(level, blocks)].mean()))

    # ---- building ------------------------------------------------------------------------------
    @classmethod
    def build(cls, model, tokenizer, *, tokens: torch.Tensor | None = None, top_k: int = TOP_K,
              exact_vocab: int = EXACT_VOCAB, seq_len: int = SEQ_LEN, level_blocks=LEVEL_BLOCKS) -> "TeacherCache":
        """Run the teacher over held-out C4 (or `tokens`, LongTensor [blocks, seq]) and keep what KL needs."""
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        level_blocks = tuple(int(b) for b in level_blocks)
        if not level_blocks or any(b < 1 for b in level_blocks) or list(level_blocks) != sorted(level_blocks):
            raise ValueError(f"level_blocks must be positive and non-decreasing, got {list(level_blocks)}")
        source = "given tokens" if tokens is not None else "c4 heldout"
        if tokens is None:
            import compress
            seq_len = min(seq_len, int(getattr(model.config, "max_position_embeddings", seq_len)))
            tokens = compress.token_blocks(tokenizer, compress.texts("c4", split="heldout"),
                                           seq_len=seq_len, count=level_blocks[-1])
        model.eval()
        vocab = _vocab(model)
        exact = vocab <= exact_vocab
        values, indices, lse, nll = [], [], [], []
        for start, logits in _chunks(model, tokens):
            lse.append(logits.logsumexp(-1))
            target = tokens[start:start + logits.shape[0], 1:]
            nll.append(lse[-1] - logits.gather(-1, target[..., None])[..., 0])
            if exact:
                values.append(logits)
            else:
                top = logits.topk(min(top_k, vocab), dim=-1)
                values.append(top.values)
                indices.append(top.indices.to(torch.int32))
        return cls(tokens=tokens.cpu(), values=torch.cat(values), indices=torch.cat(indices) if indices else None,
                   lse=torch.cat(lse), nll=torch.cat(nll), vocab_size=vocab, vocab_hash=vocab_fingerprint(tokenizer),
                   level_blocks=level_blocks,
                   meta={"top_k": None if exact else top_k, "source": source,
                         "model": str(getattr(model.config, "_name_or_path", ""))})

    # ---- persistence ---------------------------------------------------------------------------
    def save(self, path) -> Path:
        """Atomic: written to a temporary file in the same folder, then renamed over `path`."""
        from compress._atomic import save_torch
        return save_torch(path, {"tokens": self.tokens, "values": self.values, "lse": self.lse, "nll": self.nll,
                                 "indices": self.indices, "vocab_size": self.vocab_size, "vocab_hash": self.vocab_hash,
                                 "level_blocks": list(self.level_blocks), "meta": dict(self.meta),
                                 "proxy": dict(self.proxy), "format": 1})

    @classmethod
    def load(cls, path) -> "TeacherCache":
        from compress._atomic import load_torch
        data = load_torch(path, what="teacher cache", fmt=1,
                          hint=" (build one with TeacherCache.build(...).save(path))")
        return cls(tokens=data["tokens"], values=data["values"], indices=data["indices"], lse=data["lse"],
                   nll=data["nll"], vocab_size=int(data["vocab_size"]), vocab_hash=data["vocab_hash"],
                   level_blocks=tuple(data["level_blocks"]), meta=data["meta"], proxy=data.get("proxy") or {})

    @classmethod
    def load_or_build(cls, path, model, tokenizer, **kwargs) -> "TeacherCache":
        path = Path(path)
        if path.is_file():
            return cls.load(path)
        cache = cls.build(model, tokenizer, **kwargs)
        cache.save(path)
        return cache

    # ---- scoring -------------------------------------------------------------------------------
    def check_student(self, model, tokenizer=None) -> None:
        vocab = _vocab(model)
        if vocab != self.vocab_size:
            raise ValueError(f"the candidate has {vocab} output logits but the teacher cache has {self.vocab_size}: "
                             "KL to the teacher needs the same vocabulary (build the cache from this model's teacher)")
        fingerprint = vocab_fingerprint(tokenizer)
        if fingerprint and self.vocab_hash and fingerprint != self.vocab_hash:
            raise ValueError("the candidate's tokenizer vocabulary differs from the teacher's: KL to the teacher "
                             "needs the same tokenizer (build the cache from this model's teacher)")

    def score(self, model, tokenizer=None, *, level: int = 0, blocks: int | None = None,
              mask: torch.Tensor | None = None, reuse: dict | None = None) -> dict[str, float]:
        """Mean KL(teacher || model) per token in nats, and the model's perplexity, on level's blocks (or the
        first `blocks`), with their standard errors. `mask` (bool [blocks, seq_len - 1]): average only over the
        predictions it marks (e.g. a sampled continuation, not its prompt or the padding after an early stop).
        `reuse`: a dict the caller keeps between calls on one candidate (a search trial's rungs): the blocks a
        cheaper rung already scored are not run again while the model's weights are unchanged (a distillation
        step between two rungs changes them, and every block is then scored afresh)."""
        self.check_student(model, tokenizer)
        n_blocks = self.blocks(level, blocks)
        kl, nll = self._per_token(model, n_blocks, reuse if mask is None else None)
        if mask is not None:
            keep = mask[:n_blocks].bool()
            teacher = self.nll[:n_blocks].double()[keep]
            return {"kl_to_teacher": float(kl[keep].mean()), "perplexity": math.exp(float(nll[keep].mean())),
                    "teacher_perplexity": math.exp(float(teacher.mean())), "tokens": int(keep.sum())}
        return {"kl_to_teacher": float(kl.mean()), "kl_to_teacher_se": batch_means_se(kl),
                "perplexity": math.exp(float(nll.mean())), "teacher_perplexity": self.teacher_perplexity(level, n_blocks),
                "log_ppl_ratio_se": batch_means_se(nll - self.nll[:n_blocks].double())}

    def _per_token(self, model, n_blocks: int, reuse: dict | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-position KL and NLL (FP64 [n_blocks, seq_len - 1]), the first blocks from `reuse` when it holds
        them for this very model state."""
        state = weights_state(model) if reuse is not None else None
        kls, nlls, done = [], [], 0
        if reuse is not None and reuse.get("state") == state:
            done = min(n_blocks, reuse["kl"].shape[0])
            kls, nlls = [reuse["kl"][:done]], [reuse["nll"][:done]]
        for start, logits in _chunks(model, self.tokens[done:n_blocks]):
            kl, nll = self._kl_nll(logits, done + start)
            kls.append(kl)
            nlls.append(nll)
        kl, nll = torch.cat(kls), torch.cat(nlls)
        if reuse is not None and (reuse.get("state") != state or kl.shape[0] > reuse["kl"].shape[0]):
            reuse.update(state=state, kl=kl, nll=nll)
        return kl, nll

    def _kl_nll(self, logits: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """KL(teacher || student) and the student's NLL per position of blocks start.. from raw student logits
        (which it overwrites). The student's log-softmax is never materialised: log-sum-exps and gathers do."""
        end = start + logits.shape[0]
        lse_q = logits.logsumexp(-1)
        log_p = self.values[start:end] - self.lse[start:end, :, None]
        target = self.tokens[start:end, 1:, None]
        nll = (lse_q - logits.gather(-1, target)[..., 0]).double()
        if self.exact:
            kl = (log_p.exp() * (log_p - (logits - lse_q[..., None]))).sum(-1)
            return kl.clamp(min=0).double(), nll
        idx = self.indices[start:end].long()
        p = log_p.exp()
        head = (p * (log_p - (logits.gather(-1, idx) - lse_q[..., None]))).sum(-1)
        p_tail = (1 - p.sum(-1)).clamp(min=0)
        # the student's mass outside the teacher's top-k, summed over those logits themselves (1 - its top-k mass
        # would cancel where that mass is close to 1); the logits are this call's own, so masked in place
        log_q_tail = logits.scatter_(-1, idx, float("-inf")).logsumexp(-1) - lse_q
        kl = head + torch.xlogy(p_tail, p_tail) - p_tail * log_q_tail
        return kl.clamp(min=0).double(), nll


def weights_state(model) -> tuple:
    """Identifies a model's current weights: every parameter's identity and in-place version counter (an
    optimizer step or a load bumps it), so a result computed on these weights is recognised as still valid."""
    return (id(model),) + tuple((id(p), p._version) for p in model.parameters())


def batch_means_se(values: torch.Tensor, window: int = SE_WINDOW) -> float:
    """Standard error of the mean of [blocks, positions] per-token values, by non-overlapping windows' means."""
    means = torch.cat([chunk.mean(-1) for chunk in values.split(window, dim=-1)])
    if means.numel() < 2:
        return 0.0
    return float(means.std() / math.sqrt(means.numel()))


@OBJECTIVES.register("fidelity")
class FidelityObjective(Objective):
    """Metrics from a TeacherCache found on the context (`context.teacher_cache`: a cache or its path)."""
    name = "fidelity"
    max_fidelity = len(LEVEL_BLOCKS) - 1

    def __init__(self, *, teacher_cache=None, blocks: int | None = None):
        self.teacher_cache = teacher_cache
        self.block_count = blocks            # None: the fidelity level's blocks
        self._loaded: dict[str, TeacherCache] = {}

    def metrics(self) -> list[Metric]:
        return [Metric(name="kl_to_teacher", unit="nats", higher_is_better=False),
                Metric(name="kl_to_teacher_se", unit="nats", higher_is_better=False),
                Metric(name="perplexity", unit="perplexity", higher_is_better=False),
                Metric(name="teacher_perplexity", unit="perplexity", higher_is_better=False),
                Metric(name="log_ppl_ratio_se", unit="nats", higher_is_better=False)]

    def cache_for(self, context: EvalContext) -> TeacherCache:
        cache = self.teacher_cache if self.teacher_cache is not None else getattr(context, "teacher_cache", None)
        if cache is None:
            raise ValueError("the fidelity objective needs a teacher cache: set EvalContext.teacher_cache to a "
                             "TeacherCache or the path of one (TeacherCache.build(teacher, tokenizer).save(path))")
        if isinstance(cache, TeacherCache):
            return cache
        key = str(Path(cache).expanduser().resolve())
        if key not in self._loaded:
            self._loaded[key] = TeacherCache.load(key)
        return self._loaded[key]

    def evaluate(self, candidate: Candidate, context: EvalContext, fidelity: int = 0) -> dict[str, float]:
        if candidate.model is None:
            raise ValueError("the fidelity objective needs a loaded model on the candidate")
        candidate.model.eval()
        reuse = None if candidate.reuse is None else candidate.reuse.setdefault("fidelity", {})
        return self.cache_for(context).score(candidate.model, candidate.tokenizer, level=fidelity,
                                             blocks=self.block_count, reuse=reuse)
