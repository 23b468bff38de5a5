"""Experiment configs (YAML, one per model, plus the Track 2 scratch ones) and their schema."""
from ._config import (Experiment, DistillSettings, ProxySettings, Resources, SearchSettings, SpaceSettings,
                      GENERIC_SIZES, config_path_for, from_dict, generic_experiment, load_experiment,
                      read_experiment, save_experiment)
from ._scratch_config import ScratchExperiment, TrainSettings

__all__ = ["Experiment", "DistillSettings", "ProxySettings", "Resources", "SearchSettings", "SpaceSettings",
           "GENERIC_SIZES", "config_path_for", "from_dict", "generic_experiment", "load_experiment",
           "read_experiment", "save_experiment", "ScratchExperiment", "TrainSettings"]
