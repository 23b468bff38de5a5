"""Trials and their candidates, in-process on the bundled model:
- a retried trial (its rung checkpoint says 1 rung done) reports only the rungs after it;
- at its last rung a trial writes its FP16 checkpoint into the experiment's storage, unless the driver's board
  shows it cannot make the top k; the driver keeps only the top k's folders.
"""
import json

import pytest

import experiments
from search import _candidates, _driver, _tracking
from search._record import ExperimentRecord
from search._storage import DONE_MARKER, Storage
from search._trial import trial_body


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("candidates")
    # calibration from the 30 % of C4 the model predicts best: the search-level path of space.calibration
    exp = experiments.load_experiment(model="stories260k", overrides={"proxy.rungs": 2, "proxy.tasks": ["csqa"],
                                                                      "space.calibration": {"select": 0.3}})
    record = ExperimentRecord.create(root, "c")
    setup = _driver.build_setup(exp, record)
    baselines = _driver.prepare_teacher(setup, record)
    return setup, baselines, record


def _run(setup, params, *, skip=0, name="owl"):
    reports = []
    trial_body(params, setup, _tracking.TrialRun(None), baseline=name, report=lambda m: reports.append(m) or False,
               skip=skip, trial_id=f"id-{name}")
    return reports


def test_a_retried_trial_goes_on_after_its_last_rung_and_saves_its_candidate(prepared):
    setup, baselines, record = prepared
    reports = _run(setup, baselines["owl"], skip=1)
    assert [r["rung"] for r in reports] == [1]                   # rung 0 was reported before the interruption
    folder = record.top.local_path / "owl"
    assert (folder / "model.safetensors").is_file() and json.loads((folder / DONE_MARKER).read_text())["rung"] == 1
    assert record.top.is_complete("owl") and record.top.list_dirs() == ["owl"]


def test_a_trial_below_the_board_saves_nothing_and_the_keeper_keeps_the_top_k(prepared):
    setup, baselines, record = prepared
    record.top.write_text(_candidates.BOARD_FILE, json.dumps({"k": 1, "threshold": 1e9}))
    reports = _run(setup, baselines["uniform-l1"], skip=1, name="uniform-l1")
    assert reports and "uniform-l1" not in record.top.list_dirs()
    record.top.remove(_candidates.BOARD_FILE)
    _run(setup, baselines["uniform-l1"], skip=1, name="uniform-l1")
    assert record.top.list_dirs() == ["owl", "uniform-l1"]
    rows = [{"trial_id": "a", "name": "owl", "status": "complete", "score": 2.0, "constraint": -1},
            {"trial_id": "b", "name": "uniform-l1", "status": "complete", "score": 1.0, "constraint": -1},
            {"trial_id": "c", "name": "c", "status": "complete", "score": 9.0, "constraint": 0.5}]   # infeasible
    chosen = _candidates.selection(rows, k=1, second=None)
    assert [r["name"] for r in chosen] == ["owl"]
    gone = _candidates.prune_folders(record.top, keep={"owl"}, finished={"owl", "uniform-l1"})
    assert gone == ["uniform-l1"] and record.top.list_dirs() == ["owl"]


def test_storage_trouble_costs_the_trial_nothing(prepared, tmp_path):
    setup, baselines, _ = prepared
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")                           # top/ cannot be created under a file
    broken = type(setup)(**{**setup.__dict__, "top_uri": str(blocked / "top")})
    row = {"trial_id": "x", "name": "x", "score": 1.0, "constraint": -1}
    assert _candidates.offer(broken, row, lambda folder: None) is False
    assert Storage(str(tmp_path)).list_dirs() == []


def test_the_bundled_search_reconstructs_from_grams_computed_once(prepared):
    import compress
    from search._trial import load_on_device, plan_for
    setup, baselines, record = prepared
    assert setup.spec.reconstruct                     # "auto": the bundled model's Gram matrices are tiny
    assert plan_for(baselines["owl"], setup).reconstruct
    shipped = setup.rankings.get()
    assert all(g is not None for g in shipped.grams["mlp"])
    # a rankings cache written before reconstruction existed is recomputed, not left to fail every trial
    compress.Rankings(scores=shipped.scores, num_layers=shipped.num_layers, calibration=shipped.calibration,
                      meta=shipped.meta).save(record.rankings)
    _driver.attach_rankings(setup, record, lambda: load_on_device(setup.model_source))
    again = setup.rankings.get()
    assert all(a.equal(b) for a, b in zip(again.grams["mlp"], shipped.grams["mlp"]))
    assert compress.Rankings.load(record.rankings).grams


def test_a_search_calibrates_on_the_c4_its_model_predicts_best_when_asked(prepared):
    import compress
    from search._trial import load_on_device, plan_for
    setup, baselines, record = prepared
    assert plan_for(baselines["owl"], setup).calibration == {"select": 0.3}     # every plan of the search
    shipped = setup.rankings.get()
    assert shipped.calibration == compress.resolved_calibration({"select": 0.3})
    # a rankings cache from before the setting (all documents) is recomputed with it, not left to fail trials
    compress.Rankings(scores=shipped.scores, num_layers=shipped.num_layers, meta=shipped.meta, grams=shipped.grams,
                      calibration=compress.resolved_calibration({})).save(record.rankings)
    _driver.attach_rankings(setup, record, lambda: load_on_device(setup.model_source))
    assert setup.rankings.get().calibration["select"] == 0.3
    assert compress.Rankings.load(record.rankings).calibration["select"] == 0.3
