"""Where a memory or throughput number comes from, said next to the number everywhere it is shown.

    simulated          the search's models of the device (objectives/_memory.py, _throughput.py)
    measured-emulated  llama.cpp run on this host under the profile's memory cap, speed projected to the
                       phone (cluster/_emulated.py: `validate --device emulated`)
    measured-phone     llama-bench on a real phone over adb (cluster/_adb.py: `validate --device adb`)

`preferred` picks, per quantity, the most real number there is: a phone measurement, else an emulated
one, else the simulation (what the competition CSV reports, with the kind in a column of its own).
"""
from __future__ import annotations

SIMULATED, MEASURED_EMULATED, MEASURED_PHONE = "simulated", "measured-emulated", "measured-phone"
KINDS = (SIMULATED, MEASURED_EMULATED, MEASURED_PHONE)
PREFERENCE = (MEASURED_PHONE, MEASURED_EMULATED, SIMULATED)
QUANTITIES = ("peak_memory_bytes", "decode_tokens_per_s", "prefill_tokens_per_s")


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown number kind {kind!r}; known: {', '.join(KINDS)}")
    return kind


def preferred(numbers: dict[str, dict], quantity: str) -> tuple[float | None, str | None]:
    """numbers: kind -> {quantity: value}. The value of `quantity` from the most real kind that has it,
    and that kind; (None, None) when no kind has it."""
    for kind in PREFERENCE:
        value = (numbers.get(kind) or {}).get(quantity)
        if value is not None:
            return value, kind
    return None, None


def simulated_metrics() -> frozenset:
    """Names of the metrics the shape models declare `kind="simulated"` (memory and throughput objectives)."""
    global _SIMULATED
    if _SIMULATED is None:
        from ._memory import MemoryObjective
        from ._throughput import ThroughputObjective
        _SIMULATED = frozenset(m.name for o in (MemoryObjective(), ThroughputObjective()) for m in o.metrics()
                               if m.kind == SIMULATED)
    return _SIMULATED


_SIMULATED = None


def label(name: str) -> str:
    """A metric's name as shown where several kinds meet (MLflow): simulated ones carry their kind."""
    return f"{SIMULATED}/{name}" if name in simulated_metrics() else name
