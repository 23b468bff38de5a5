"""Experiment configs (YAML, one per model) and their schema."""
from ._config import (Experiment, DistillSettings, ProxySettings, Resources, SearchSettings, SpaceSettings,
                      GENERIC_SIZES, config_path_for, from_dict, generic_experiment, load_experiment,
                      read_experiment, save_experiment)

__all__ = ["Experiment", "DistillSettings", "ProxySettings", "Resources", "SearchSettings", "SpaceSettings",
           "GENERIC_SIZES", "config_path_for", "from_dict", "generic_experiment", "load_experiment",
           "read_experiment", "save_experiment"]
