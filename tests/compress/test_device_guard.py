"""Device correctness without a GPU: pruning (every criterion, calibration included), OWL ratios, the
teacher cache and a trial's scoring run with the model on the CPU and torch's default device set to
`meta` (tests/device_guard.py). Any tensor created without an explicit device fails here exactly as
it fails next to a CUDA model."""
import copy

import pytest
import torch

import compress
import objectives
from compress import Plan
from tests.compress.test_prune import CALIB, IDS, NON_UNIFORM
from tests.conftest import FAMILIES, tiny_model
from tests.device_guard import foreign_default_device


def test_guard_catches_a_tensor_created_without_a_device():
    weight = torch.ones(4, 3)
    with foreign_default_device(), pytest.raises((RuntimeError, NotImplementedError)):
        total = torch.zeros(4, dtype=torch.float64)      # the bug that crashed GPU trials
        total += weight.double().sum(1)
        total.tolist()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("criterion", ["l1", "l2", "activation", "taylor"])
@pytest.mark.parametrize("unit", ["kv_group", "head"])
def test_prune_creates_every_tensor_on_the_models_device(family, criterion, unit):
    dense = tiny_model(family)
    expected = copy.deepcopy(dense)
    plan = Plan.from_dict({**NON_UNIFORM, "importance": criterion, "attn_unit": unit})
    want = compress.prune(expected, None, plan, calibration=CALIB)
    with foreign_default_device():
        got = compress.prune(dense, None, plan, calibration=CALIB)
    assert got.kept == want.kept and got.layer_map == want.layer_map
    assert all(p.device.type == "cpu" for p in dense.parameters())
    with torch.no_grad():
        assert torch.equal(dense(IDS).logits, expected(IDS).logits)


def test_bundled_calibration_owl_teacher_cache_and_scoring_stay_on_the_models_device(tmp_path):
    model, tokenizer = compress.load_model("stories260k")
    with foreign_default_device():
        calibration = compress.calibration_tokens(tokenizer)
        selected = compress.calibration_tokens(tokenizer, {"samples": 8, "select": 0.3}, model=model)
        ratios = compress.layer_outlier_ratios(model, calibration)
        cache = objectives.TeacherCache.build(model, tokenizer)
    assert calibration.device.type == selected.device.type == "cpu" and len(ratios) == 5
    student = copy.deepcopy(model)
    plan = Plan.uniform(5, attn_keep=0.5, mlp_keep=0.5, importance="activation")
    with foreign_default_device():
        result = compress.prune(student, tokenizer, plan)
        candidate = objectives.Candidate(shapes=result.shapes, model=student, tokenizer=tokenizer)
        context = objectives.EvalContext(profile="stories260k-tiny", teacher_cache=cache)
        proxy = objectives.ProxyAccuracyObjective(tasks=("csqa", "gsm8k"))
        values = objectives.evaluate_all(candidate, context, objectives=["memory", "throughput", "fidelity", proxy])
    assert values["kl_to_teacher"] > 0 and 0 <= values["proxy_accuracy"] <= 1
