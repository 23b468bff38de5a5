"""Every README figure follows from the results file it cites (bench/readme_figures.py), and the check fails when
a figure, a file or a key is gone."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench import readme_figures  # noqa: E402


def test_every_readme_figure_follows_from_its_results_file():
    assert readme_figures.problems() == []


def test_the_check_fails_on_a_stale_figure_a_missing_key_and_a_missing_file(monkeypatch):
    readme = (readme_figures.REPO / "README.md").read_text()
    stale = readme.replace("perplexity 2147 -> 40.6", "perplexity 2147 -> 40.7")
    assert any("distill_recovery.json" in p for p in readme_figures.problems(stale))
    real = readme_figures.load
    monkeypatch.setattr(readme_figures, "load", lambda name: {k: v for k, v in real(name).items() if k != "totals"}
                        if name == "proxy_vs_opencompass.json" else real(name))
    assert any("cannot derive" in p and "KeyError" in p for p in readme_figures.problems(readme))
    assert any("not in bench/results" in p for p in readme_figures.problems(readme + " `gone_bench.json`"))
