"""Experiment configs (YAML, one per model) and their schema."""
from ._config import (Experiment, DistillSettings, ProxySettings, Resources, SearchSettings, SpaceSettings,
                      config_path_for, from_dict, load_experiment, read_experiment, save_experiment)

__all__ = ["Experiment", "DistillSettings", "ProxySettings", "Resources", "SearchSettings", "SpaceSettings",
           "config_path_for", "from_dict", "load_experiment", "read_experiment", "save_experiment"]
