"""Search spaces: trial -> parameters -> Plan (pure), runtime rules, and baseline warm-start points."""
from ._space import SpaceSpec, define_space, distill_schedule_params, params_to_plan, shares_of
from ._baselines import BASELINES, owl, uniform_l1
from ._arch import (ArchSpec, check_feasible, check_params, define_arch_space, params_to_arch, schedule_params,
                    smallest_arch, spec_from_dict)

__all__ = ["SpaceSpec", "define_space", "distill_schedule_params", "params_to_plan", "shares_of",
           "BASELINES", "owl", "uniform_l1", "ArchSpec", "check_feasible", "check_params", "define_arch_space",
           "params_to_arch", "schedule_params", "smallest_arch", "spec_from_dict"]
