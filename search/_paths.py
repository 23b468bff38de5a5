"""The experiment directory: one folder per experiment holding everything it produced."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass(frozen=True)
class ExperimentDir:
    root: Path          # the runs folder holding all experiments (and the MLflow store)
    name: str

    @property
    def path(self) -> Path:
        return self.root / self.name

    config = property(lambda self: self.path / "config.yaml")
    state = property(lambda self: self.path / "state.json")
    results = property(lambda self: self.path / "results.json")
    teacher_cache = property(lambda self: self.path / "teacher_cache.pt")
    tune = property(lambda self: self.path / "tune")
    top = property(lambda self: self.path / "top")

    @property
    def optuna_url(self) -> str:
        return f"sqlite:///{(self.path / 'optuna.db').resolve()}"

    @classmethod
    def check_new(cls, root, name: str) -> "ExperimentDir":
        """The paths of a new experiment; refuses an existing one (nothing is created)."""
        paths = cls._checked(root, name)
        if paths.path.exists() and (not paths.path.is_dir() or any(paths.path.iterdir())):
            raise ValueError(f"experiment {name!r} already exists in {paths.root}; continue it with "
                             f"`python -m search resume --experiment {name}` or pick another --experiment")
        return paths

    @classmethod
    def create(cls, root, name: str) -> "ExperimentDir":
        paths = cls.check_new(root, name)
        paths.path.mkdir(parents=True, exist_ok=True)
        return paths

    @classmethod
    def open(cls, root, name: str) -> "ExperimentDir":
        paths = cls._checked(root, name)
        if not paths.config.is_file():
            raise ValueError(f"no experiment {name!r} in {paths.root}")
        return paths

    @classmethod
    def _checked(cls, root, name: str) -> "ExperimentDir":
        if not NAME_RE.match(name or ""):
            raise ValueError(f"experiment name {name!r}: use letters, digits, '.', '_' or '-'")
        return cls(Path(root).resolve(), name)

    def tune_state_exists(self) -> bool:
        return self.tune.is_dir() and any(self.tune.glob("experiment_state-*.json"))

    def write_json(self, path: Path, data) -> None:
        from compress._atomic import write_json
        write_json(path, data)

    def write_state(self, data: dict) -> None:
        self.write_json(self.state, data)

    def read_state(self) -> dict:
        return json.loads(self.state.read_text()) if self.state.is_file() else {}
