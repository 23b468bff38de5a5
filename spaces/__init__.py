"""Search spaces: trial -> parameters -> Plan (pure), runtime rules, and baseline warm-start points; Track 2's
architecture + schedule space (parameters -> Arch, repaired onto the budget)."""
from ._space import (CRITERION, SpaceSpec, current_names, define_space, distill_schedule_params, grow, memory_target,
                     params_to_plan, share_name, shares_of, smallest_plans)
from ._baselines import (BASELINES, CRITERIA as BASELINE_CRITERIA, flap, influence_order, llm_pruner, minitron, owl,
                         shortgpt, uniform_l1)
from ._arch import (ArchSpec, check_feasible, check_params, define_arch_space, params_to_arch, schedule_params,
                    smallest_arch, spec_from_dict)

__all__ = ["CRITERION", "SpaceSpec", "current_names", "define_space", "distill_schedule_params", "grow", "memory_target",
           "params_to_plan", "share_name", "shares_of", "smallest_plans",
           "BASELINES", "BASELINE_CRITERIA", "flap", "influence_order", "llm_pruner", "minitron", "owl", "shortgpt",
           "uniform_l1", "ArchSpec", "check_feasible", "check_params", "define_arch_space",
           "params_to_arch", "schedule_params", "smallest_arch", "spec_from_dict"]
