"""Search spaces: trial -> parameters -> Plan (pure), runtime rules, and baseline warm-start points."""
from ._space import SpaceSpec, define_space, distill_schedule_params, params_to_plan, shares_of, smallest_plans
from ._baselines import BASELINES, owl, uniform_l1

__all__ = ["SpaceSpec", "define_space", "distill_schedule_params", "params_to_plan", "shares_of", "smallest_plans",
           "BASELINES", "owl", "uniform_l1"]
