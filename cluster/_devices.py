"""Device backends: run an exported GGUF with llama.cpp and measure what a phone would see.

- `adb`: a real phone over adb, llama.cpp's own `llama-bench` (the only source of real phone numbers);
- `emulated`: llama.cpp on this host under a memory cap equal to the profile's budget, decode speed
  projected to the phone by the ratio of memory bandwidths (decode is bandwidth-bound).

Phones on a Ray cluster: start the node that has the phone attached with
    ray start --address HEAD:6379 --resources '{"phone": 1}'
and `validate_on_cluster` schedules adb runs there (one per phone at a time); emulated runs need none.
"""
from __future__ import annotations

from pathlib import Path

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field

from compress import Registry

DEFAULT_PROMPT_TOKENS = 64
DEFAULT_GEN_TOKENS = 32
DEFAULT_REPETITIONS = 3
PHONE_RESOURCE = "phone"       # the Ray custom resource a node with an attached phone advertises


@dataclass(frozen=True, kw_only=True)
class ValidationResult:
    backend: str
    decode_tokens_per_s: float | None      # phone decode speed (measured on adb, projected if emulated)
    prefill_tokens_per_s: float | None
    peak_memory_bytes: int | None
    fits: bool                              # False: the run exceeded the memory cap ("does not fit")
    notes: list[str] = field(default_factory=list)
    raw: dict = field(default_factory=dict)  # backend-specific measurements, for the record

    def to_dict(self) -> dict:
        return asdict(self)


class DeviceBackend(ABC):
    name: str = ""
    kind: str = ""            # what its numbers are: objectives._provenance MEASURED_EMULATED / MEASURED_PHONE

    @abstractmethod
    def run(self, gguf_path, *, prompt_tokens: int = DEFAULT_PROMPT_TOKENS, gen_tokens: int = DEFAULT_GEN_TOKENS,
            repetitions: int = DEFAULT_REPETITIONS) -> ValidationResult:
        """Benchmark one GGUF file; a model that does not fit is a result (fits=False), not an error."""


def check_run_args(gguf_path, prompt_tokens: int, gen_tokens: int, repetitions: int) -> Path:
    """Validate a backend's run() arguments; returns the GGUF path."""
    for name, value, low in (("prompt_tokens", prompt_tokens, 1), ("gen_tokens", gen_tokens, 1),
                             ("repetitions", repetitions, 1)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise ValueError(f"GGUF file not found: {gguf_path}")
    return gguf_path


BACKENDS: Registry[type[DeviceBackend]] = Registry("device backend")


def kind_of_device(name: str) -> str:
    """The kind of number a backend measures ("measured-emulated", "measured-phone")."""
    from . import _adb, _emulated  # noqa: F401 - registering the built-in backends
    return BACKENDS.get(name).kind


def get_backend(name: str, **options) -> DeviceBackend:
    """A backend instance by name; options go to its constructor (AdbBackend(config=...), ...)."""
    from . import _adb, _emulated  # noqa: F401 - registering the built-in backends
    return BACKENDS.get(name)(**options)


# ---- Ray ---------------------------------------------------------------------------------------------
def task_options(backend: str) -> dict:
    """Ray task options for one validation run: adb runs need a node with a phone (one run per phone at
    a time); emulated runs need only a CPU."""
    if backend == "adb":
        return {"num_cpus": 1, "resources": {PHONE_RESOURCE: 1}}
    return {"num_cpus": 1}


def _run_backend(backend: str, options: dict, gguf_path: str, run_args: dict) -> ValidationResult:
    return get_backend(backend, **options).run(gguf_path, **run_args)


def validate_on_cluster(gguf_path, *, backend: str = "adb", options: dict | None = None,
                        address: str | None = None, **run_args) -> ValidationResult:
    """Run one validation as a Ray task (joins `address`, or the running / a local Ray instance).
    The GGUF path must be readable on the node that runs it (shared storage on a multi-node cluster)."""
    import ray
    from . import _adb, _emulated  # noqa: F401 - registering the built-in backends
    BACKENDS.get(backend)                                    # unknown backend: fail before scheduling
    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    task = ray.remote(_run_backend).options(**task_options(backend))
    return ray.get(task.remote(backend, dict(options or {}), str(gguf_path), run_args))
