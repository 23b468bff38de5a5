"""A results file's commit says -dirty only when tracked code differs from it, not when results files do."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench import _provenance  # noqa: E402


def fake_git(status: str):
    def git(*args, strip=True):
        out = "abc123\n" if args[0] == "rev-parse" else status
        return out.strip() if strip else out
    return git


def test_only_changed_results_files_are_not_dirty(monkeypatch):
    monkeypatch.setattr(_provenance, "_git", fake_git(" M bench/results/a.json\nM  bench/results/b.json\n"))
    assert _provenance.commit() == "abc123"


def test_changed_code_is_dirty(monkeypatch):
    monkeypatch.setattr(_provenance, "_git", fake_git(" M bench/results/a.json\n M search/_driver.py\n"))
    assert _provenance.commit() == "abc123-dirty"
