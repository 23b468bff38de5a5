"""GPU checks (`pytest -m gpu`; skipped without CUDA). CPU CI guards the same bug class with
tests/compress/test_device_guard.py; these run the real thing whenever a GPU machine is available:

- pruning a CUDA FP16 model keeps the same units as pruning the CPU FP32 model (ties within FP16
  rounding of the criterion's own scores excepted) and computes the same logits within FP16 tolerance;
- reconstruction (Gram matrices and the least-squares refit) on CUDA FP16 matches the CPU FP32 refit;
- a whole trial body (prune, every objective, every rung) and a distilling one run on CUDA;
- DeepSpeed BF16 distillation steps with a frozen BF16 teacher, for ZeRO 0 and 3, and the memory
  estimate is not below what CUDA really allocated;
- the evaluate verb runs on the GPU.
"""
import copy
import json

import pytest
import torch

import compress
from compress import Plan
from compress._groups import attention_group, mlp_group
from compress._rankings import score_group as _scores
from compress._statistics import collect_statistics
from tests.compress.test_prune import CALIB, IDS, NON_UNIFORM
from tests.conftest import FAMILIES, tiny_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
NEAR_TIE = 2e-2          # relative score gap under which FP16 rounding may reorder two units
LOGIT_ATOL = 3e-2        # FP16 matmuls of a 4-layer, hidden-64 model vs FP32


def fp16_exact(model):
    """Weights exactly representable in FP16, so both runs start from the same numbers."""
    return model.half().float()


def cpu_unit_scores(model, plan: Plan):
    """Per base layer: the CPU FP32 criterion scores of attention units and MLP channels."""
    adapter = compress.family_of(model.config)
    base = compress.shapes_from_config(model.config)
    criterion = compress.get_criterion(plan.importance)
    stats = collect_statistics(model, adapter, CALIB, criterion.requires) if criterion.requires else {}
    out = []
    for layer, shape in zip(adapter.layers(model), base.layers):
        attn = attention_group(adapter.attention(layer), heads=shape.num_attention_heads,
                               kv_heads=shape.num_key_value_heads, head_dim=base.head_dim,
                               unit=plan.attn_unit_for(shape))
        out.append({"attn": _scores(criterion, attn, stats),
                    "mlp": _scores(criterion, mlp_group(adapter.mlp(layer), ffn=shape.intermediate_size), stats)})
    return out


def assert_same_units_up_to_ties(cpu_kept, gpu_kept, scores, per_group: int):
    """Every unit kept by one run and not the other sits within NEAR_TIE of the cut on the CPU scores."""
    for key, unit in (("q_heads", "attn"), ("mlp_channels", "mlp")):
        for layer, (a, b) in enumerate(zip(cpu_kept, gpu_kept)):
            a_set, b_set = set(a[key] or []), set(b[key] or [])
            if a_set == b_set:
                continue
            s = scores[layer][unit]
            ids = lambda units: {u // per_group for u in units} if unit == "attn" and per_group > 1 else units  # noqa
            kept = sorted(ids(a_set))
            cut = min(float(s[i]) for i in kept)
            for u in ids(a_set ^ b_set):
                assert abs(float(s[u]) - cut) <= NEAR_TIE * abs(cut), (layer, unit, u, float(s[u]), cut)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("criterion", ["l1", "l2", "activation", "taylor"])
def test_prune_on_cuda_fp16_matches_cpu_fp32(family, criterion):
    dense = fp16_exact(tiny_model(family))
    plan = Plan.from_dict({**NON_UNIFORM, "importance": criterion})
    cpu = copy.deepcopy(dense)
    gpu = copy.deepcopy(dense).half().cuda()
    want = compress.prune(cpu, None, plan, calibration=CALIB)
    got = compress.prune(gpu, None, plan, calibration=CALIB)
    assert got.layer_map == want.layer_map and got.shapes == want.shapes
    assert all(p.device.type == "cuda" and p.dtype == torch.float16 for p in gpu.parameters())
    base = compress.shapes_from_config(dense.config)
    per_group = base.layers[0].num_attention_heads // base.layers[0].num_key_value_heads
    if criterion in ("l1", "l2"):
        assert got.kept == want.kept            # magnitudes of identical FP16 numbers: no reordering
    else:
        assert_same_units_up_to_ties(want.kept, got.kept, cpu_unit_scores(copy.deepcopy(dense), plan), per_group)
    # the same kept units -> the same function: prune the CPU copy with the GPU's choice and compare logits
    if got.kept == want.kept:
        with torch.no_grad():
            ref = cpu(IDS).logits
            out = gpu(IDS.cuda()).logits.float().cpu()
        assert torch.allclose(out, ref, atol=LOGIT_ATOL, rtol=1e-2), (out - ref).abs().max()


@pytest.mark.parametrize("family", FAMILIES)
def test_reconstruction_on_cuda_fp16_matches_cpu_fp32(family):
    """The Gram matrices accumulate in FP32 on the GPU and the refit solves there: the same refit weights
    as on the CPU, within FP16 tolerance (l1: the same units on both)."""
    dense = fp16_exact(tiny_model(family))
    plan = Plan.from_dict({**NON_UNIFORM, "importance": "l1", "reconstruct": True})
    cpu, gpu = copy.deepcopy(dense), copy.deepcopy(dense).half().cuda()
    want = compress.prune(cpu, None, plan, calibration=CALIB)
    got = compress.prune(gpu, None, plan, calibration=CALIB)
    assert got.kept == want.kept
    assert all(p.device.type == "cuda" and p.dtype == torch.float16 for p in gpu.parameters())
    with torch.no_grad():
        ref = cpu(IDS).logits
        out = gpu(IDS.cuda()).logits.float().cpu()
    assert torch.allclose(out, ref, atol=2 * LOGIT_ATOL, rtol=2e-2), (out - ref).abs().max()


def test_calibration_selection_on_cuda_fp16_picks_the_cpu_documents():
    """Ranking C4 documents by the dense model's NLL runs on the model's device: the bundled model in FP16 on
    the GPU selects the documents it selects in FP32 on the CPU (FP16 may swap a near-tie at the threshold)."""
    model, tokenizer = compress.load_model("stories260k")
    docs = compress.texts("c4", split="train")
    want = compress.predictable_documents(model, tokenizer, docs, fraction=0.3, seq_len=128)
    got = compress.predictable_documents(copy.deepcopy(model).half().cuda(), tokenizer, docs, fraction=0.3,
                                         seq_len=128)
    assert len(got) == len(want) == 72 and len(set(want) - set(got)) <= 2


def _setup(tmp_path, **overrides):
    import experiments
    from search import _driver
    from search._record import ExperimentRecord
    # chance_z null: the proxy is scored although the 260K model is at chance on every task (the ladder skips
    # such tasks by default), so the whole trial runs it on CUDA
    ladder = [{"kl_blocks": 8}, {"kl_blocks": 32, "proxy": "loglik", "proxy_level": 0, "chance_z": None}]
    exp = experiments.load_experiment(model="stories260k", overrides={"proxy.unsafe_exec": True, "proxy.ladder": ladder,
                                                                     **overrides})
    paths = ExperimentRecord.create(tmp_path, "gpu")
    setup = _driver.build_setup(exp, paths)
    return setup, _driver.prepare_teacher(setup, paths)


@pytest.mark.parametrize("distill", [False, True])
def test_whole_trial_runs_on_cuda(tmp_path, distill):
    from search import _tracking
    from search._trial import trial_body
    overrides = {"distill.enabled": True, "distill.steps": [8], "distill.precision": "bf16",
                 "distill.zero_stage": 3} if distill else {}
    setup, baselines = _setup(tmp_path, **overrides)
    reports = []
    _, result, model = trial_body(baselines["owl"], setup, _tracking.TrialRun(None, None), baseline="owl",
                                  report=lambda m: reports.append(m) or False)
    assert len(reports) == setup.rungs
    for r in reports:
        assert r["kl_to_teacher"] > 0 and r["peak_memory_bytes"] > 0
    assert 0 <= reports[-1]["proxy_accuracy"] <= 1          # the final rung runs the proxy (rung 0: KL only)
    if distill:
        assert reports[-1]["distill_step"] == 8 and reports[-1]["kl_to_teacher"] < reports[0]["kl_to_teacher"] * 1.5
    else:
        assert next(model.parameters()).device.type == "cuda"


@pytest.mark.parametrize("zero_stage", [0, 3])
def test_bf16_distillation_steps_fit_the_estimate(zero_stage):
    teacher = tiny_model("llama", vocab_size=512).cuda().half()
    student = copy.deepcopy(teacher)
    result = compress.prune(student, None, Plan.from_dict(NON_UNIFORM), calibration=CALIB)
    tok = compress.load_model("stories260k")[1]
    schedule = compress.DistillSchedule(steps=6, seq_len=64, batch_size=4, precision="bf16", zero_stage=zero_stage,
                                        report_every=3, heldout_blocks=2)
    before = [p.detach().clone() for p in student.parameters()]
    torch.cuda.reset_peak_memory_stats()
    base_alloc = torch.cuda.memory_allocated() - sum(p.numel() * p.element_size() for p in student.parameters()) \
        - sum(p.numel() * p.element_size() for p in teacher.parameters())
    trained, history = compress.distill(student, teacher, tok, schedule, layer_map=result.layer_map)
    peak = torch.cuda.max_memory_allocated() - base_alloc
    estimate = compress.estimate_for_shapes(result.shapes, compress.shapes_from_config(teacher.config), schedule,
                                            gpus=1, device_type="cuda")
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    assert any(not torch.equal(a.float().cpu(), b.float()) for a, b in zip(before, trained.parameters()))
    assert next(teacher.parameters()).dtype == torch.float16   # handed back as it came
    assert estimate["total"] - estimate["slack"] >= peak, (estimate, peak)


def test_evaluate_verb_runs_on_the_gpu(capsys):
    from search._cli import main
    assert main(["evaluate", "--model", "stories260k", "--teacher", "stories260k", "--tasks", "csqa", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["accelerator"].startswith("cuda") and out["metrics"]["kl_to_teacher"]["value"] < 1e-2
