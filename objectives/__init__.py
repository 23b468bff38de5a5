"""Objectives: every score a trial gets (memory, throughput, proxy accuracy, teacher fidelity)."""
# interface
from ._base import OBJECTIVES, Candidate, EvalContext, Metric, Objective
# device profiles, memory and throughput models, real memory measurement
from ._profiles import DEFAULT_PROFILE, PROFILES, DeviceProfile, get_profile
from ._memory import MemoryEstimate, MemoryObjective, estimate_memory
from ._throughput import ThroughputObjective, decode_tokens_per_s, prefill_tokens_per_s
from ._measure import compare_memory, measure_peak_memory

__all__ = ["OBJECTIVES", "Candidate", "EvalContext", "Metric", "Objective",
           "DEFAULT_PROFILE", "PROFILES", "DeviceProfile", "get_profile",
           "MemoryEstimate", "MemoryObjective", "estimate_memory",
           "ThroughputObjective", "decode_tokens_per_s", "prefill_tokens_per_s",
           "compare_memory", "measure_peak_memory"]

# benchmark proxy, teacher fidelity, composite score and evaluate_all
from ._tasks import TASKS, Task, get_task
from ._proxy import ProxyAccuracyObjective
from ._fidelity import FidelityObjective, TeacherCache
from ._composite import COMPOSITE, ProxyWeights, composite_score
from ._evaluate import describe, evaluate_all
# agreement between two scorings (fidelity rungs, proxy vs OpenCompass): per item and by rank
from ._agreement import item_agreement, spearman, spearman_interval

__all__ = [*globals().get("__all__", []), "TASKS", "Task", "get_task", "ProxyAccuracyObjective", "FidelityObjective",
           "TeacherCache", "COMPOSITE", "ProxyWeights", "composite_score", "describe", "evaluate_all",
           "item_agreement", "spearman", "spearman_interval"]
