"""llama-cpp-python (the `phone` extra) is installed by the verbs that need it, saying so, never skipped."""
import importlib.util

import pytest

from search import _phone


def test_the_requirement_is_pyprojects_phone_extra():
    text = (_phone.__file__.rsplit("/search/", 1)[0] + "/pyproject.toml")
    assert f'phone = ["{_phone.phone_requirement()}"]' in open(text).read()


def test_a_missing_llama_cpp_is_built_with_one_line_saying_why(monkeypatch, capsys):
    installed = []
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if installed else None)
    monkeypatch.setattr(_phone.subprocess, "call", lambda cmd: installed.append(cmd) or 0)
    _phone.ensure_llama_cpp("validate", why="the emulated phone runs GGUF files")
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("validate: building llama-cpp-python==") and "GGUF" in out[0]
    assert installed[0][1:] == ["-m", "pip", "install", "-q", _phone.phone_requirement()]
    _phone.ensure_llama_cpp("validate", why="x")           # present now: nothing built, nothing said
    assert len(installed) == 1 and capsys.readouterr().out == ""


def test_a_failed_build_stops_the_verb_with_the_command_to_run(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(_phone.subprocess, "call", lambda cmd: 1)
    with pytest.raises(SystemExit, match="pip install 'llama-cpp-python=="):
        _phone.ensure_llama_cpp("submit", why="checks")
