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
