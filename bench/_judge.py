"""The benchmarks' judge: text that neither calibration nor any fitness ever read, in two splits.

Per split (compress's C4 "dev" and "test" documents, reserved for judges: no calibration, training, fitness or
`evaluate` reads them; settings are chosen on dev and reported on test):
  - c4_<split>: the split's documents packed into blocks of SEQ_LEN tokens (BOS-separated, as the fitness packs
    held-out C4): KL(dense || candidate) per token and the candidate's perplexity;
  - sampled_<split>: text the dense model samples at temperature 1 (no top-k / top-p) from prompts no trial
    sees: the first `prompt` tokens of the split's documents (prompt 1: BOS alone, for a model like the bundled
    TinyStories one whose own domain is not C4). KL and perplexity on the sampled continuation only (its
    prompt and anything after an end-of-sequence token are masked out).
The KL is objectives.TeacherCache's (one KL implementation): the dense model's logits are cached once.
"""
from __future__ import annotations

import torch

SPLITS = ("dev", "test")
SEQ_LEN = 256
SAMPLE_SEED = 1234
GENERATE_BATCH = 8


def build(model, tokenizer, *, blocks: dict, prompt: int, seed: int = SAMPLE_SEED) -> dict:
    """{"c4_dev": (cache, None), "sampled_dev": (cache, mask), ...}: `blocks[split]` C4 blocks and as many
    sampled sequences per split."""
    import compress
    import objectives
    out = {}
    for split in SPLITS:
        docs = compress.texts("c4", split=split)
        c4 = compress.token_blocks(tokenizer, docs, seq_len=SEQ_LEN, count=blocks[split])
        tokens, mask = sample(model, tokenizer, docs, count=blocks[split], prompt=prompt,
                              seed=seed + SPLITS.index(split))
        for name, toks, m in ((f"c4_{split}", c4, None), (f"sampled_{split}", tokens, mask)):
            out[name] = (objectives.TeacherCache.build(model, tokenizer, tokens=toks, level_blocks=(toks.shape[0],)), m)
    return out


@torch.no_grad()
def sample(model, tokenizer, docs: list[str], *, count: int, prompt: int, seed: int):
    """`count` sequences of SEQ_LEN tokens the dense model samples from the docs' first `prompt` tokens (BOS
    included; cycling through the docs), and the mask of the predictions that were sampled."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    prompts = []
    for doc in docs:
        ids = ([bos] if bos is not None else []) + tokenizer(doc, add_special_tokens=False, verbose=False)["input_ids"]
        if len(ids) > prompt:
            prompts.append(ids[:prompt])
    rows = [prompts[i % len(prompts)] for i in range(count)]
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    out = []
    for start in range(0, count, GENERATE_BATCH):
        batch = torch.tensor(rows[start:start + GENERATE_BATCH], device=device)
        gen = model.generate(batch, attention_mask=torch.ones_like(batch), do_sample=True, temperature=1.0, top_k=0,
                             top_p=1.0, max_new_tokens=SEQ_LEN - prompt, min_new_tokens=SEQ_LEN - prompt
                             if eos is None else 0, pad_token_id=eos if eos is not None else 0, eos_token_id=eos)
        gen = torch.nn.functional.pad(gen, (0, SEQ_LEN - gen.shape[1]), value=eos if eos is not None else 0)
        out.append(gen.cpu())
    tokens = torch.cat(out)
    mask = torch.zeros(tokens.shape[0], SEQ_LEN - 1, dtype=torch.bool)
    for r, row in enumerate(tokens.tolist()):
        end = SEQ_LEN
        if eos is not None and eos in row[prompt:]:
            end = prompt + row[prompt:].index(eos) + 1          # the end-of-sequence prediction counts, what follows not
        mask[r, prompt - 1:end - 1] = True                      # prediction p is of token p + 1
    return tokens, mask


def judge_model(model, tokenizer, sets: dict) -> dict:
    """{"kl_c4_dev": ..., "ppl_c4_dev": ..., ...} of `model` against every judge set."""
    out = {}
    for name, (cache, mask) in sets.items():
        scored = cache.score(model, tokenizer, blocks=cache.tokens.shape[0], mask=mask)
        out[f"kl_{name}"] = round(scored["kl_to_teacher"], 4)
        out[f"ppl_{name}"] = round(scored["perplexity"], 3)
    return out


def dense_perplexity(sets: dict) -> dict:
    """The dense model's own perplexity on each judge set (for the record)."""
    import math
    out = {}
    for name, (cache, mask) in sets.items():
        nll = cache.nll[mask] if mask is not None else cache.nll
        out[name] = round(math.exp(float(nll.double().mean())), 3)
    return out


def save(sets: dict, path) -> None:
    from compress._atomic import save_torch
    save_torch(path, {name: {"cache": _cache_dict(cache), "mask": mask} for name, (cache, mask) in sets.items()})


def load(path) -> dict:
    import objectives
    data = torch.load(path, weights_only=False)
    return {name: (objectives.TeacherCache(**entry["cache"]), entry["mask"]) for name, entry in data.items()}


def _cache_dict(cache) -> dict:
    import dataclasses
    return {f.name: getattr(cache, f.name) for f in dataclasses.fields(cache)}
