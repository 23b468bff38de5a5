"""Rankings computed once from the dense model give every trial exactly what its own ranking gave."""
import copy
import pickle

import pytest
import torch

import compress
from compress import Plan
from tests.compress.test_prune import CALIB, IDS, NON_UNIFORM
from tests.conftest import FAMILIES, tiny_model

CRITERIA = ["l1", "l2", "activation", "taylor"]
UNITS = ["kv_group", "head"]


@pytest.mark.parametrize("family", FAMILIES)
def test_precomputed_rankings_keep_the_same_units_and_logits(family, tmp_path):
    dense = tiny_model(family)
    once = compress.compute_rankings(copy.deepcopy(dense), None, criteria=CRITERIA, attn_units=UNITS, tokens=CALIB)
    once.save(tmp_path / "rankings.pt")
    shipped = pickle.loads(pickle.dumps(compress.Rankings.load(tmp_path / "rankings.pt")))   # disk, then Ray
    for criterion in CRITERIA:
        for unit in UNITS:
            plan = Plan.from_dict({**NON_UNIFORM, "importance": criterion, "attn_unit": unit})
            own, sliced = copy.deepcopy(dense), copy.deepcopy(dense)
            expected = compress.prune(own, None, plan, calibration=CALIB)          # ranked for this plan alone
            got = compress.prune(sliced, None, plan, rankings=shipped)              # slices the shared ranking
            assert got.kept == expected.kept, (criterion, unit)
            with torch.no_grad():
                assert torch.equal(sliced(IDS).logits, own(IDS).logits), (criterion, unit)
    # the criteria really rank differently (otherwise the comparison above could not tell them apart)
    mlp = [tuple(shipped.layer_scores(c, "mlp", 0).argsort().tolist()) for c in CRITERIA]
    assert len(set(mlp)) > 1


def test_rankings_refuse_plans_they_cannot_serve():
    dense = tiny_model("llama")
    rankings = compress.compute_rankings(dense, None, criteria=["l1", "activation"], tokens=CALIB)
    with pytest.raises(ValueError, match="none for taylor"):
        compress.prune(copy.deepcopy(dense), None, Plan.from_dict({**NON_UNIFORM, "importance": "taylor"}),
                       rankings=rankings)
    with pytest.raises(ValueError, match="attention units"):
        compress.prune(copy.deepcopy(dense), None, Plan.from_dict({**NON_UNIFORM, "attn_unit": "head"}),
                       rankings=rankings)
    from_settings = compress.Rankings(scores=rankings.scores, num_layers=4, calibration={"samples": 16, "seq_len": 128,
                                                                                         "seed": 0})
    plan = Plan.from_dict({**NON_UNIFORM, "importance": "activation", "calibration": {"seed": 3}})
    with pytest.raises(ValueError, match="calibration"):
        compress.prune(copy.deepcopy(dense), None, plan, rankings=from_settings)
    # l1 never reads calibration data: any calibration setting is served
    compress.prune(copy.deepcopy(dense), None, Plan.from_dict({**NON_UNIFORM, "calibration": {"seed": 3}}),
                   rankings=from_settings)


def test_one_shared_pass_on_fp32_collects_what_separate_passes_collect():
    """On an FP32 model the gradient pass also collects the forward statistics (one pass over the calibration
    blocks, not two); what it collects is what the forward-only pass and the gradient pass collect apart."""
    from compress._families import family_of
    from compress._rankings import statistics_passes
    from compress._statistics import collect_statistics
    model = tiny_model("llama")
    every = frozenset({"activations", "moments", "sample_abs_mean", "gram", "influence", "gradients"})
    assert statistics_passes(model, every) == [every]
    assert len(statistics_passes(copy.deepcopy(model).half(), every)) == 2     # a 16-bit pass may re-run a batch
    adapter = family_of(model.config)
    shared = collect_statistics(model, adapter, CALIB, every)
    apart = {**collect_statistics(model, adapter, CALIB, every - {"gradients"}),
             **collect_statistics(model, adapter, CALIB, frozenset({"gradients"}))}
    assert shared.keys() == apart.keys()
    for key in shared:
        if key == "influence":
            for idx, (total, count) in apart[key].items():
                assert shared[key][idx][1] == count and shared[key][idx][0] == pytest.approx(total, rel=1e-5)
            continue
        for module, value in apart[key].items():
            if torch.is_tensor(value):
                assert torch.allclose(shared[key][module], value, rtol=1e-5, atol=1e-6), key
            else:                                                  # token counts
                assert shared[key][module] == value, key
