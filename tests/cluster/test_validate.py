"""`validate_experiment` and the `search validate` / `search export` verbs on a hand-made finished
experiment (two pruned checkpoints of the bundled model), with the emulated backend."""
import argparse
import json

import pytest

import compress
import objectives
from compress import LayerPlan, Plan
from search._record import ExperimentRecord
from search._verbs_export import add_export_args, add_validate_args, run_export, run_validate

pytest.importorskip("llama_cpp")

PLANS = {"rank1-trial_a": [(0.5, 0.75)] * 5, "rank2-trial_b": [(0, 1), (1, 0), (0, 0), (0.5, 0.5), (0.75, 0.3)]}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    exp = root / "stories"
    top = []
    for rank, (name, layers) in enumerate(PLANS.items(), start=1):
        model, tok = compress.load_model("stories260k")
        plan = Plan(layers=tuple(LayerPlan(attn_keep=a, mlp_keep=m) for a, m in layers))
        result = compress.prune(model, tok, plan)
        compress.save_pruned(model, tok, exp / "top" / name, plan=plan, summary=result.summary())
        top.append({"rank": rank, "trial_id": name[6:], "name": None, "score": 0.5 - rank / 10,
                    "peak_memory_bytes": 700_000, "params": result.params, "dir": str(exp / "top" / name)})
    (exp / "results.json").write_text(json.dumps({"summary": {"top": top}, "trials": []}))
    (exp / "config.yaml").write_text("model: stories260k\ndevice: phone-12gb\n")
    return root, exp


@pytest.fixture
def mlflow_parent(experiment, monkeypatch):
    """A parent run in a file store (the SQLite store's first migration alone takes ~10 s)."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient
    _, exp = experiment
    uri = (exp.parent / "mlruns").as_uri()
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(client.create_experiment("stories"))
    (exp / "state.json").write_text(json.dumps({"tracking_uri": uri, "parent_run_id": run.info.run_id}))
    yield client, run.info.run_id
    (exp / "state.json").unlink()


def test_validate_experiment_writes_measured_next_to_simulated(experiment, mlflow_parent):
    from cluster import validate_experiment
    _, exp = experiment
    client, run_id = mlflow_parent
    record = validate_experiment(ExperimentRecord(exp.parent, exp.name), top=2, device="emulated", prompt_tokens=16,
                                 gen_tokens=8, repetitions=1, backend_options={"threads": 1})
    assert json.loads((exp / "validation-emulated.json").read_text()) == json.loads(json.dumps(record, default=str))
    assert record["profile"] == "phone-12gb" and [c["rank"] for c in record["candidates"]] == [1, 2]
    assert record["kind"] == "measured-emulated" and record["runtime"] == "llama.cpp"
    for cand in record["candidates"]:
        measured, simulated = cand["measured"], cand["simulated"]
        assert measured["kind"] == "measured-emulated" and simulated["kind"] == "simulated"
        assert measured["decode_tokens_per_s"] > 0 and measured["prefill_tokens_per_s"] > 0
        assert measured["peak_memory_bytes"] > 0 and measured["fits"]
        assert simulated["decode_tokens_per_s"] > 0 and simulated["peak_memory_bytes"] > 0
        assert cand["measured_over_simulated"]["decode"] > 0
        assert cand["raw"]["llama_buffers"]["model"] > 0 and (exp / "exports" / cand["gguf"].split("/")[-1]).is_file()
    run = client.get_run(run_id)
    assert run.data.metrics["measured-emulated/rank1/decode_tokens_per_s"] > 0
    assert "simulated/rank2/peak_memory_bytes" in run.data.metrics
    assert run.data.tags["measured.measured-emulated"] == "emulated"
    assert [a.path for a in client.list_artifacts(run_id)] == ["validation-emulated.json"]


def _validate(root, *extra):
    p = argparse.ArgumentParser()
    add_validate_args(p)
    return run_validate(p.parse_args(["--experiment", "stories", "--root", str(root), "--prompt-tokens", "16",
                                      "--gen-tokens", "4", "--repetitions", "1", "--threads", "1", *extra]))


def test_validate_verb_on_the_bundled_profile_then_calibrates_a_profile_file(experiment, capsys, tmp_path):
    """The bundled profile models llama.cpp's fixed memory (before, a 0.7 MB budget without the runtime made
    every candidate 'NO' by 10x); --calibrate writes a user profile with the fitted costs and the measurements,
    and a tighter budget in that file does not fit. How closely simulated and measured agree is a target,
    measured by bench/sim_vs_measured.py: llama.cpp's resident file pages vary by environment (about 20 %
    between this checkout's venv and a fresh clone's), so no fixed tolerance belongs in a test."""
    root, exp = experiment
    assert _validate(root, "--top", "2", "--profile", "stories260k-tiny", "--calibrate", str(tmp_path / "me.json")) == 0
    out = capsys.readouterr().out
    assert "calibrated llama.cpp in" in out
    record = json.loads((exp / "validation-emulated.json").read_text())
    for cand in record["candidates"]:
        measured, simulated = cand["measured"]["peak_memory_bytes"], cand["simulated"]["peak_memory_bytes"]
        assert 0.5 < simulated / measured < 2, (simulated, measured)     # not the 10x of a profile without runtime
    saved = json.loads((tmp_path / "me.json").read_text())
    entry = saved["calibration"][-1]
    assert len(entry["measurements"]) == 2 and entry["runtime"] == "llama.cpp" and entry["kind"] == "measured-emulated"
    fitted = objectives.get_profile(str(tmp_path / "me.json"))
    assert fitted.name == "me" and fitted.runtimes["llama.cpp"].overhead_bytes == entry["fitted"]["overhead_bytes"]
    for p in entry["measurements"]:           # the upper envelope: no candidate's measurement above the fit
        assert p["model_bytes"] + fitted.runtime_overhead_bytes >= p["measured_peak_memory_bytes"]
    saved["profile"]["memory_budget_bytes"] = fitted.runtime_overhead_bytes // 2
    (tmp_path / "me.json").write_text(json.dumps(saved))
    assert _validate(root, "--top", "1", "--profile", str(tmp_path / "me.json")) == 0
    assert "NO / NO" in capsys.readouterr().out
    record = json.loads((exp / "validation-emulated.json").read_text())
    assert record["candidates"][0]["measured"]["notes"][0].startswith("does not fit")


def test_calibrate_fits_overhead_envelope_and_bandwidth_from_spread():
    from cluster._calibrate import fit
    profile = objectives.get_profile("phone-12gb")
    pts = [{"measured_peak_memory_bytes": b + 1000 + noise, "model_bytes": b,
            "measured_decode_tokens_per_s": 1 / (2e-3 + b / 40e9), "decode_bytes_per_token": b}
           for b, noise in ((1e9, 0), (2e9, 300), (4e9, 100))]
    got = fit(pts, profile)
    assert got["overhead_bytes"] == 4096 and got["memory_residuals_bytes"] == [1000, 1300, 1100]  # 1300 + 300, paged
    assert got["decode_bandwidth_bytes_per_s"] == pytest.approx(40e9) and got["token_overhead_s"] == pytest.approx(2e-3)
    one = fit(pts[:1], profile)                   # too little spread to fit the bandwidth: the profile's is kept
    assert one["decode_bandwidth_bytes_per_s"] == profile.decode_bandwidth_bytes_per_s
    assert one["token_overhead_s"] == pytest.approx(2e-3 + 1e9 / 40e9 - 1e9 / profile.decode_bandwidth_bytes_per_s)
    with pytest.raises(ValueError, match="nothing to calibrate"):
        fit([], profile)


def test_calibrate_pools_earlier_runs_with_the_same_settings(tmp_path):
    """Runs minutes apart differ more than candidates within one run: the fit pools every earlier run in the
    file that measured the same thing, and a run with other settings starts a pool of its own."""
    from cluster._calibrate import calibrate
    profile = objectives.get_profile("stories260k-tiny")

    def record(residual: int, tok_s: float, prompt: int = 64) -> dict:
        cands = [{"rank": r, "name": f"c{r}", "trial_id": f"t{r}",
                  "measured": {"peak_memory_bytes": 500_000 + residual + r, "decode_tokens_per_s": tok_s},
                  "simulated": {"model_bytes": 500_000, "decode_bytes_per_token": 400_000}} for r in (1, 2)]
        return {"experiment": "e", "device": "emulated", "kind": "measured-emulated", "candidates": cands,
                "settings": {"prompt_tokens": prompt, "gen_tokens": 32, "repetitions": 7}}

    path = tmp_path / "me.json"
    first = calibrate(record(4_000_000, 20_000.0), profile, path)
    second = calibrate(record(4_030_000, 16_000.0), profile, path)
    assert first["fitted"]["pooled_runs"] == 1 and second["fitted"]["pooled_runs"] == 2
    assert len(second["fitted"]["memory_residuals_bytes"]) == 4
    # the envelope covers both runs: the larger residual plus the spread between the runs
    assert second["fitted"]["overhead_bytes"] >= 4_030_002 + 30_001
    assert objectives.get_profile(str(path)).runtimes["llama.cpp"].overhead_bytes == second["fitted"]["overhead_bytes"]
    other = calibrate(record(4_000_000, 20_000.0, prompt=16), profile, path)        # other settings: alone
    assert other["fitted"]["pooled_runs"] == 1 and other["fitted"]["overhead_bytes"] < 4_030_002
    assert len(json.loads(path.read_text())["calibration"]) == 3
