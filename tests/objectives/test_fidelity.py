"""Teacher fidelity: KL(teacher || candidate) is 0 for the teacher, grows along a nested pruning family,
survives a save/load round trip, and refuses a candidate with another vocabulary."""
import copy

import pytest
import torch

import compress
from compress import Plan
from objectives._base import Candidate, EvalContext
from objectives._fidelity import FidelityObjective, TeacherCache
from tests.objectives.conftest import random_llama, train_tokenizer


@pytest.fixture(scope="module")
def teacher(lm):
    model, tok, bundled = lm
    return model, tok, TeacherCache.build(model, tok, level_blocks=(2, 4, 4), seq_len=128)


def test_teacher_against_itself_is_zero(teacher):
    model, tok, cache = teacher
    assert cache.exact   # vocabulary 512 <= EXACT_VOCAB
    result = cache.score(model, tok, level=0)
    assert result["kl_to_teacher"] == pytest.approx(0.0, abs=1e-5)
    assert result["perplexity"] == pytest.approx(result["teacher_perplexity"], rel=1e-4)
    topk = TeacherCache.build(model, tok, tokens=cache.tokens[:2], top_k=16, exact_vocab=0)
    assert not topk.exact and topk.values.shape[-1] == 16
    assert topk.score(model, tok)["kl_to_teacher"] == pytest.approx(0.0, abs=1e-5)


def test_topk_kl_is_a_lower_bound_that_tightens_with_k(teacher):
    model, tok, cache = teacher
    student = _pruned(model, tok, attn_keep=1.0, mlp_keep=0.25)
    tokens = cache.tokens[:2]
    exact = TeacherCache.build(model, tok, tokens=tokens).score(student)["kl_to_teacher"]
    approx = [TeacherCache.build(model, tok, tokens=tokens, top_k=k, exact_vocab=0).score(student)["kl_to_teacher"]
              for k in (4, 64, 511)]
    chain = approx + [exact]
    assert all(a <= b * (1 + 1e-5) + 1e-6 for a, b in zip(chain, chain[1:])), chain   # float noise only
    assert approx[2] == pytest.approx(exact, rel=1e-3, abs=1e-6)


def _pruned(model, tok, *, attn_keep, mlp_keep):
    pruned = copy.deepcopy(model)
    plan = Plan.uniform(model.config.num_hidden_layers, attn_keep=attn_keep, mlp_keep=mlp_keep, importance="l1")
    compress.prune(pruned, tok, plan)
    return pruned


def test_kl_grows_along_nested_pruning(teacher):
    """l1 ranks units by weight alone, so keeping 0.75 / 0.5 / 0.25 of the MLP channels removes a
    growing, nested set of the same units; removing attention as well adds divergence on top."""
    model, tok, cache = teacher
    mlp_family = [cache.score(_pruned(model, tok, attn_keep=1.0, mlp_keep=k), level=1)["kl_to_teacher"]
                  for k in (1.0, 0.75, 0.5, 0.25)]
    assert mlp_family[0] == pytest.approx(0.0, abs=1e-5)
    assert all(a < b for a, b in zip(mlp_family, mlp_family[1:])), mlp_family
    no_attn = [cache.score(_pruned(model, tok, attn_keep=0.0, mlp_keep=k), level=1)["kl_to_teacher"]
               for k in (1.0, 0.5)]
    assert 0 < no_attn[0] < no_attn[1]
    attn_family = [cache.score(_pruned(model, tok, attn_keep=k, mlp_keep=1.0), level=1)["kl_to_teacher"]
                   for k in (1.0, 0.5, 0.0)]
    assert all(a < b for a, b in zip(attn_family, attn_family[1:])), attn_family


def test_cache_round_trip_and_objective(teacher, tmp_path):
    model, tok, cache = teacher
    path = cache.save(tmp_path / "teacher.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["teacher.pt"]   # no temporary file left behind
    loaded = TeacherCache.load(path)
    for name in ("tokens", "values", "lse", "nll"):
        assert torch.equal(getattr(loaded, name), getattr(cache, name))
    assert (loaded.vocab_size, loaded.vocab_hash, loaded.level_blocks) == (cache.vocab_size, cache.vocab_hash, (2, 4, 4))
    student = _pruned(model, tok, attn_keep=1.0, mlp_keep=0.5)
    objective = FidelityObjective()
    got = objective.evaluate(Candidate(shapes=None, model=student, tokenizer=tok), EvalContext(teacher_cache=str(path)), 1)
    assert got == cache.score(student, tok, level=1)
    assert {m.name for m in objective.metrics()} == set(got)
    assert TeacherCache.load_or_build(path, None, None).tokens.shape == cache.tokens.shape
    with pytest.raises(ValueError, match="teacher cache not found"):
        TeacherCache.load(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="needs a teacher cache"):
        objective.evaluate(Candidate(shapes=None, model=student), EvalContext(), 0)


def test_levels_use_more_tokens(teacher):
    _, _, cache = teacher
    assert [cache.blocks(k) for k in range(3)] == [2, 4, 4]
    with pytest.raises(ValueError, match="fidelity"):
        cache.blocks(3)


def test_vocabulary_mismatch_is_refused(teacher):
    model, tok, cache = teacher
    with pytest.raises(ValueError, match="same vocabulary"):
        cache.score(random_llama(vocab=cache.vocab_size + 8))
    other_tokenizer = train_tokenizer(cache.vocab_size, source="alpaca_zh")   # same size, other tokens
    with pytest.raises(ValueError, match="tokenizer vocabulary differs"):
        cache.score(random_llama(vocab=cache.vocab_size), other_tokenizer)


def _reference_kl(cache: TeacherCache, model, blocks: int) -> float:
    """KL(teacher || model) the plain way: the student's full log-softmax, the tail by scattering the top-k out."""
    kls = []
    with torch.no_grad():
        for b in range(blocks):
            log_q = model(input_ids=cache.tokens[b:b + 1]).logits[:, :-1].float().log_softmax(-1)
            log_p = cache.values[b:b + 1] - cache.lse[b:b + 1, :, None]
            if cache.exact:
                kls.append((log_p.exp() * (log_p - log_q)).sum(-1))
                continue
            idx = cache.indices[b:b + 1].long()
            p = log_p.exp()
            p_tail = (1 - p.sum(-1)).clamp(min=0)
            tail = log_q.scatter(-1, idx, float("-inf")).logsumexp(-1)
            kls.append((p * (log_p - log_q.gather(-1, idx))).sum(-1) + torch.xlogy(p_tail, p_tail) - p_tail * tail)
    return float(torch.cat(kls).clamp(min=0).double().mean())


@pytest.mark.parametrize("exact", [True, False])
def test_kl_matches_the_log_softmax_formula(teacher, exact):
    model, tok, cache = teacher
    if not exact:
        cache = TeacherCache.build(model, tok, tokens=cache.tokens[:4], top_k=16, exact_vocab=0)
    student = _pruned(model, tok, attn_keep=0.5, mlp_keep=0.5)
    got = cache.score(student, tok, blocks=4)["kl_to_teacher"]
    assert got > 1e-3 and got == pytest.approx(_reference_kl(cache, student, 4), rel=1e-5)


def test_a_later_rung_reuses_the_blocks_an_earlier_one_scored_until_the_weights_change(teacher):
    model, tok, cache = teacher
    student = _pruned(model, tok, attn_keep=0.5, mlp_keep=0.75)
    forwards = []
    student.register_forward_hook(lambda module, args, kwargs, out: forwards.append(kwargs["input_ids"].shape[0]),
                                  with_kwargs=True)
    memo: dict = {}

    def blocks_run(**kwargs):
        forwards.clear()
        result = cache.score(student, tok, reuse=memo, **kwargs)
        return result, sum(forwards)
    cheap, ran = blocks_run(blocks=2)
    assert ran == 2
    full, ran = blocks_run(blocks=4)
    assert ran == 2                                      # blocks 0-1 came from the cheaper rung
    fresh = cache.score(student, tok, blocks=4)          # no memo: all four blocks
    for key in ("kl_to_teacher", "kl_to_teacher_se", "perplexity", "log_ppl_ratio_se"):
        assert full[key] == pytest.approx(fresh[key], rel=1e-6)
    assert blocks_run(blocks=2)[1] == 0 and blocks_run(blocks=2)[0]["kl_to_teacher"] == pytest.approx(
        cheap["kl_to_teacher"], rel=1e-6)
    with torch.no_grad():                                # what an optimizer step does: the weights change in place
        student.model.layers[0].mlp.down_proj.weight.mul_(0.5)
    changed, ran = blocks_run(blocks=4)
    assert ran == 4 and changed["kl_to_teacher"] != pytest.approx(full["kl_to_teacher"], rel=1e-6)
