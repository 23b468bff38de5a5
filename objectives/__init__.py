"""Objectives: every score a trial gets (memory, throughput, proxy accuracy, teacher fidelity)."""
# interface
from ._base import OBJECTIVES, Candidate, EvalContext, Metric, Objective
# device profiles, memory and throughput models, real memory measurement
from ._profiles import DEFAULT_PROFILE, PROFILES, RUNTIMES, DeviceProfile, RuntimeCost, get_profile, shippable_profile
from ._provenance import KINDS, MEASURED_EMULATED, MEASURED_PHONE, SIMULATED, preferred
from ._memory import MemoryEstimate, MemoryObjective, estimate_memory
from ._throughput import ThroughputObjective, decode_tokens_per_s, prefill_tokens_per_s
from ._measure import compare_memory, measure_peak_memory

__all__ = ["OBJECTIVES", "Candidate", "EvalContext", "Metric", "Objective",
           "DEFAULT_PROFILE", "PROFILES", "RUNTIMES", "DeviceProfile", "RuntimeCost", "get_profile", "shippable_profile",
           "KINDS", "MEASURED_EMULATED", "MEASURED_PHONE", "SIMULATED", "preferred",
           "MemoryEstimate", "MemoryObjective", "estimate_memory",
           "ThroughputObjective", "decode_tokens_per_s", "prefill_tokens_per_s",
           "compare_memory", "measure_peak_memory"]

# benchmark proxy, teacher fidelity, composite score and evaluate_all
from ._tasks import TASKS, Task, get_task
from ._proxy import ProxyAccuracyObjective
from ._fidelity import LEVEL_BLOCKS, FidelityObjective, TeacherCache
from ._composite import COMPOSITE, ProxyWeights, composite_score
from ._evaluate import describe, evaluate_all
from ._ladder import Ladder, Rung, accuracy_change, parse_ladder, proxy_modes, rank_agreement
from ._heldout import HeldoutObjective
# agreement between two scorings (fidelity rungs, proxy vs OpenCompass): per item and by rank
from ._agreement import item_agreement, spearman, spearman_interval

__all__ = [*globals().get("__all__", []), "TASKS", "Task", "get_task", "ProxyAccuracyObjective", "FidelityObjective",
           "TeacherCache", "LEVEL_BLOCKS", "COMPOSITE", "ProxyWeights", "composite_score", "describe", "evaluate_all",
           "Ladder", "Rung", "accuracy_change", "parse_ladder", "proxy_modes", "rank_agreement", "HeldoutObjective",
           "item_agreement", "spearman", "spearman_interval"]
