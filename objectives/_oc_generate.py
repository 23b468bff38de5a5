"""Greedy generation exactly as OpenCompass 0.5.4's HuggingFace model classes do it, batched, without OpenCompass.

HuggingFaceBaseModel.generate (`--hf-type base`) / HuggingFacewithChatTemplate.generate (`--hf-type chat`, what the
competition ran for instruct models), for one batch:
  1. chat: tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False), then tokenised
     without special tokens; base: the prompt string tokenised with them (BOS). Both: padding on the left,
     truncation on the LEFT to max_seq_len (the model's max_position_embeddings) with the generation budget NOT
     reserved, so a long prompt keeps max_seq_len tokens and the generation runs past the context.
  2. pad token: the tokenizer's, else generation_config.pad_token_id, else EOS (OpenCompass's fallback order).
  3. model.generate(input_ids, attention_mask, max_new_tokens=max_out_len, do_sample=False, pad_token_id): the
     checkpoint's generation_config stays in force (its EOS ids, and processors that still apply to greedy
     decoding, e.g. Qwen2-7B-Instruct's repetition_penalty 1.05), which is why decoding goes through
     transformers' own `generate` rather than a hand loop.
  4. decode the new tokens (base: skip_special_tokens=True; chat: special tokens kept) and cut at every stop word
     (chat: the decoded EOS tokens; the competition's dataset configs add none).
Batches are OpenCompass's: consecutive items of one dataset, `batch_size` at a time (numerics depend on the
padding a row gets, so the same rows go together).

One deliberate addition: `settled(text)` (optional) marks a row finished once its extractor's answer can no
longer change (objectives._oc_post); the row's text is then a prefix of OpenCompass's, with the same score.
"""
from __future__ import annotations

import contextlib

import torch

from ._opencompass import BATCH_SIZE      # the batches objectives._opencompass runs OpenCompass with
from ._scoring import context_limit


def chat_text(tokenizer, messages: list[dict]) -> str:
    """HuggingFacewithChatTemplate: the conversation through the tokenizer's chat template, generation prompt on."""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def stop_words(model, tokenizer, *, chat: bool) -> list[str]:
    """HuggingFacewithChatTemplate._get_potential_stop_words (chat); the base class has none."""
    if not chat:
        return []
    words = []
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for token in ([eos] if isinstance(eos, int) else list(eos or [])):
        words.append(tokenizer.decode(token))
    if tokenizer.eos_token is not None:
        words.append(tokenizer.eos_token)
    return [w for w in dict.fromkeys(words) if w]


def cut(text: str, words) -> str:
    for word in words:
        text = text.split(word)[0]
    return text


@contextlib.contextmanager
def _opencompass_tokenizer(tokenizer, model):
    """padding / truncation on the left and OpenCompass's pad-token fallback, restored afterwards."""
    saved = (tokenizer.padding_side, tokenizer.truncation_side, tokenizer.pad_token_id)
    tokenizer.padding_side = tokenizer.truncation_side = "left"
    if tokenizer.pad_token_id is None:
        config = getattr(model, "generation_config", None)
        pad = getattr(config, "pad_token_id", None)
        tokenizer.pad_token_id = pad if pad is not None else tokenizer.eos_token_id
    try:
        yield tokenizer
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = saved[:2]
        if saved[2] is None:
            tokenizer.pad_token_id = None


class _RowsDone:
    """A stopping criterion that marks a row finished at EOS, once its text holds a stop word (OpenCompass cuts
    there), or once its `settled` rule fires; it records how many new tokens the row had then (the rest of the
    row is padding). Finished rows still ride along in the batch, as in OpenCompass."""

    def __init__(self, tokenizer, start: int, words, rules, skip_special: bool, eos_ids: set[int]):
        self.tokenizer, self.start, self.words, self.rules = tokenizer, start, words, rules
        self.skip, self.eos = skip_special, eos_ids
        self.length: list[int | None] = [None] * len(rules)

    def __call__(self, input_ids, scores, **kwargs):
        for i, row in enumerate(input_ids[:, self.start:].tolist()):
            if self.length[i] is not None:
                continue
            if row and row[-1] in self.eos:
                self.length[i] = len(row)
            elif self.words or self.rules[i]:
                raw = self.tokenizer.decode(row, skip_special_tokens=self.skip)
                if any(w in raw for w in self.words) or (self.rules[i] and self.rules[i](cut(raw, self.words))):
                    self.length[i] = len(row)
        return torch.tensor([n is not None for n in self.length], device=input_ids.device)


@torch.no_grad()
def generate_like_opencompass(model, tokenizer, prompts, *, max_out_len: int, chat: bool, max_seq_len=None,
                              settled=None, batch_size: int = BATCH_SIZE) -> list[str]:
    """Greedy continuations of `prompts` (strings for base models, message lists for chat), `batch_size` rows at
    a time in the order given: what OpenCompass's prediction files hold (a prefix of it where `settled` fired).
    `settled`: None, one predicate for every row, or a list with one (or None) per prompt."""
    from transformers import StoppingCriteriaList
    max_seq_len = int(max_seq_len or context_limit(model))
    words = stop_words(model, tokenizer, chat=chat)
    eos = getattr(model.generation_config, "eos_token_id", None)
    eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
    rules = list(settled) if isinstance(settled, (list, tuple)) else [settled] * len(prompts)
    if len(rules) != len(prompts):
        raise ValueError(f"{len(rules)} settled rules for {len(prompts)} prompts")
    device = next(model.parameters()).device
    out = []
    with _opencompass_tokenizer(tokenizer, model):
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start:start + batch_size]
            texts = [chat_text(tokenizer, m) for m in batch] if chat else list(batch)
            tokens = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_seq_len,
                               add_special_tokens=not chat)
            tokens = {k: v.to(device) for k, v in tokens.items()}
            width = tokens["input_ids"].shape[1]
            done = _RowsDone(tokenizer, width, words, rules[start:start + batch_size], not chat, eos_ids)
            generated = model.generate(**tokens, max_new_tokens=max_out_len, do_sample=False,
                                       pad_token_id=tokenizer.pad_token_id,
                                       stopping_criteria=StoppingCriteriaList([done]))
            for row, length in zip(generated[:, width:].tolist(), done.length):
                text = tokenizer.decode(row[:length] if length is not None else row, skip_special_tokens=not chat)
                out.append(cut(text, words))
    return out
