"""Model-side scoring: option log-likelihoods, batched greedy generation (programs run in _sandbox).

Prompts are left-truncated to the model's context (max_position_embeddings) minus what must follow them
(the longest option, or the generation budget), as OpenCompass does; unlike OpenCompass we keep the
BOS token in front of a truncated prompt, because Llama-style models degrade badly without it.
"""
from __future__ import annotations

import re

import torch

from ._sandbox import PROGRAM_TIMEOUT, run_program, run_programs  # noqa: F401  (execution lives there)

DEFAULT_CONTEXT = 2048          # when the config names no max_position_embeddings
GENERATE_BATCH = 8              # prompts decoded together (left-padded)


def context_limit(model) -> int:
    return int(getattr(model.config, "max_position_embeddings", None) or DEFAULT_CONTEXT)


def _device(model):
    return next(model.parameters()).device


def _takes(model, name: str) -> bool:
    import inspect
    return name in inspect.signature(model.forward).parameters


def _cache_kwarg(model) -> str:
    """transformers 5.2x renamed forward's `past_key_values` to `cache`; use whichever this model takes."""
    return "cache" if _takes(model, "cache") else "past_key_values"


def _cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text)["input_ids"])


def truncate_left(ids: list[int], limit: int, bos: int | None) -> list[int]:
    if len(ids) <= limit:
        return ids
    if bos is not None and ids and ids[0] == bos:
        return [bos] + ids[len(ids) - limit + 1:]
    return ids[len(ids) - limit:]


def continuation_ids(tokenizer, prompt_ids: list[int], prompt: str, option: str) -> list[int]:
    """The option's tokens as they are tokenised after the prompt (lm-eval's convention: encode the
    whole and drop the prompt's tokens), so merges across the boundary count as in the real text."""
    whole = encode(tokenizer, prompt + option)
    if whole[:len(prompt_ids)] == prompt_ids and len(whole) > len(prompt_ids):
        return whole[len(prompt_ids):]
    return list(tokenizer(option, add_special_tokens=False)["input_ids"])


@torch.no_grad()
def option_loglikelihoods(model, tokenizer, prompt: str, options) -> list[float]:
    """Summed log p(option tokens | prompt) for each option."""
    prompt_ids = encode(tokenizer, prompt)
    conts = [continuation_ids(tokenizer, prompt_ids, prompt, o) for o in options]
    longest = max(len(c) for c in conts)
    prompt_ids = truncate_left(prompt_ids, max(1, context_limit(model) - longest), tokenizer.bos_token_id)
    return _score_on_shared_prompt(model, prompt_ids, conts)


def _score_on_shared_prompt(model, prompt_ids: list[int], conts: list[list[int]]) -> list[float]:
    """One pass over the prompt, then every option in one batch on top of its KV cache (right-padded:
    the padding comes after every real token, so the causal mask keeps it out of their logits)."""
    device, longest = _device(model), max(len(c) for c in conts)
    out = model(input_ids=torch.tensor([prompt_ids], device=device), use_cache=longest > 1)
    first = out.logits[0, -1].float().log_softmax(-1)
    scores = [float(first[c[0]]) for c in conts]
    if longest > 1:
        cache = _cache_of(out)
        cache.batch_repeat_interleave(len(conts))
        batch = torch.zeros(len(conts), longest - 1, dtype=torch.long, device=device)
        for i, c in enumerate(conts):
            batch[i, :len(c) - 1] = torch.tensor(c[:-1], device=device)
        logp = model(input_ids=batch, use_cache=True, **{_cache_kwarg(model): cache}).logits.float().log_softmax(-1)
        for i, c in enumerate(conts):
            if len(c) > 1:
                target = torch.tensor(c[1:], device=device)
                scores[i] += float(logp[i, :len(c) - 1].gather(-1, target[:, None]).sum())
    return scores


def choice_credit(scores: list[float], label: int) -> float:
    """1 if the gold option scores highest; 1/k when it ties with k-1 others, so a model that scores
    every option alike earns chance, not whatever the option order favours."""
    best = max(scores)
    tied = [i for i, s in enumerate(scores) if s == best]
    return 1.0 / len(tied) if label in tied else 0.0


def _finish(text: str, stop: re.Pattern | None, keep: bool) -> str | None:
    if stop is None:
        return None
    match = stop.search(text)
    if match is None:
        return None
    return text[:match.end()] if keep else text[:match.start()]


@torch.no_grad()
def greedy_generate(model, tokenizer, queries, *, max_new_tokens: int, batch_size: int = GENERATE_BATCH) -> list[str]:
    """Greedy continuations of `queries` (objects with prompt / stop / keep_stop), left-padded batches.
    A row stops at its stop pattern, at EOS, or after max_new_tokens; the budget never exceeds half
    the context, so a long prompt always keeps at least half of it."""
    limit = context_limit(model)
    budget = max(1, min(max_new_tokens, limit // 2))
    out = []
    for start in range(0, len(queries), batch_size):
        out += _generate_batch(model, tokenizer, queries[start:start + batch_size], budget, limit)
    return out


def _generate_batch(model, tokenizer, queries, budget: int, limit: int) -> list[str]:
    device = _device(model)
    ids = [truncate_left(encode(tokenizer, q.prompt), limit - budget, tokenizer.bos_token_id) for q in queries]
    width = max(len(x) for x in ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long, device=device)
    mask = torch.zeros((len(ids), width), dtype=torch.long, device=device)
    for i, row in enumerate(ids):
        input_ids[i, width - len(row):] = torch.tensor(row, device=device)
        mask[i, width - len(row):] = 1
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    stops = [re.compile(q.stop, re.DOTALL) if q.stop else None for q in queries]
    new = [[] for _ in queries]
    texts: list[str | None] = [None] * len(queries)
    eos = tokenizer.eos_token_id
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=position, use_cache=True)
    for step in range(budget):
        token = out.logits[:, -1].argmax(-1)
        for i, t in enumerate(token.tolist()):
            if texts[i] is not None:
                continue
            if t == eos:
                texts[i] = tokenizer.decode(new[i], skip_special_tokens=True)
                continue
            new[i].append(t)
            texts[i] = _finish(tokenizer.decode(new[i], skip_special_tokens=True), stops[i], queries[i].keep_stop)
        if all(t is not None for t in texts) or step == budget - 1:
            break
        mask = torch.cat([mask, mask.new_ones(len(ids), 1)], dim=1)
        position = position[:, -1:] + 1
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=position,
                    use_cache=True, **{_cache_kwarg(model): _cache_of(out)})
    return [t if t is not None else tokenizer.decode(n, skip_special_tokens=True) for t, n in zip(texts, new)]

