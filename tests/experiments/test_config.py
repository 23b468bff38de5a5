"""Experiment YAMLs: one per model, all valid; overrides apply; typos are errors, not silent defaults."""
import pytest

import experiments

MODELS = ["stories260k", "phi-2", "llama-3-8b", "qwen-7b"]


@pytest.mark.parametrize("model", MODELS)
def test_every_shipped_experiment_loads(model, tmp_path):
    exp = experiments.load_experiment(model=model)
    assert exp.model == model and exp.search.trials >= 1
    path = tmp_path / "config.yaml"
    experiments.save_experiment(exp, path)
    assert experiments.read_experiment(path) == exp   # the stored resolved config rebuilds it


def test_overrides_and_defaults():
    exp = experiments.load_experiment(model="stories260k", overrides={"search.trials": 7, "budget_gb": 0.5,
                                                                     "distill.enabled": True, "runtime": "mlc"})
    assert (exp.search.trials, exp.budget_gb, exp.distill.enabled, exp.runtime) == (7, 0.5, True, "mlc")
    assert exp.device == "stories260k-tiny"
    other = experiments.load_experiment(model="someorg/some-llama")  # no YAML of its own: the phone template
    assert other.model == "someorg/some-llama" and other.device == "phone-12gb"


@pytest.mark.parametrize("overrides, message", [
    ({"search.sampler": "cmaess"}, "search.sampler must be one of"),
    ({"search.sampler": "evolution", "search.mode": "multi"}, "evolution is single-objective"),
    ({"search.min_tokens_per_s": -1}, "min_tokens_per_s must be a positive number"),
    ({"runtime": "vllm"}, "runtime must be one of"),
    ({"search.trial": 3}, "unknown keys in 'search'"),
    ({"budget_gb": 0}, "budget_gb must be positive"),
    ({"space.min_keep": 1.5}, "min_keep must be a number in"),
    ({"space.reconstruct": "yes"}, "space.reconstruct must be true, false or auto"),
    ({"space.calibration.select": 0}, r"space.calibration.select must be a fraction in \(0, 1\]"),
    ({"space.calibration.sample": 8}, r"unknown space.calibration keys \['sample'\]"),
])
def test_bad_configs_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        experiments.load_experiment(model="stories260k", overrides=overrides)


def test_an_experiment_saved_before_reconstruction_resumes_without_it(tmp_path):
    import yaml
    exp = experiments.load_experiment(model="stories260k")
    assert exp.space.reconstruct == "auto"
    path = tmp_path / "config.yaml"
    experiments.save_experiment(exp, path)
    assert experiments.read_experiment(path).space.reconstruct == "auto"      # saved with the key: as saved
    old = yaml.safe_load(path.read_text())
    del old["space"]["reconstruct"]                                         # what an older version saved
    path.write_text(yaml.safe_dump(old))
    assert experiments.read_experiment(path).space.reconstruct is False


def test_an_experiment_saved_before_calibration_select_resumes_on_all_documents(tmp_path):
    import yaml
    assert experiments.load_experiment(model="stories260k").space.calibration == {}   # all of C4 (README)
    path = tmp_path / "config.yaml"
    exp = experiments.load_experiment(model="stories260k", overrides={"space.calibration.select": 0.3})
    experiments.save_experiment(exp, path)
    assert experiments.read_experiment(path).space.calibration == {"select": 0.3}
    old = yaml.safe_load(path.read_text())
    del old["space"]["calibration"]                                         # what an older version saved
    path.write_text(yaml.safe_dump(old))
    assert experiments.read_experiment(path).space.calibration == {}      # compress's default: select 1.0
