"""llama.cpp on this host (llama-cpp-python, the project's `phone` extra) is installed when a verb first needs it.

It builds from source (~7 min on 2 cores), and the search never uses it: `make run` does not wait for it. `make
test` and `make phone` install it; `validate --device emulated` and `submit` (whose checks load the GGUF) install it
themselves the first time, saying so in one line. Never skipped silently.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys

FALLBACK = "llama-cpp-python==0.3.36"      # pyproject's phone extra, when the project's metadata is not installed


def phone_requirement() -> str:
    """The `phone` extra's requirement as pyproject.toml pins it (one place says the version)."""
    from importlib.metadata import PackageNotFoundError, requires
    try:
        for req in requires("edgeprune") or ():
            name, _, marker = req.partition(";")
            if "extra" in marker and '"phone"' in marker.replace("'", '"'):
                return name.strip()
    except PackageNotFoundError:
        pass
    return FALLBACK


def ensure_llama_cpp(verb: str, *, why: str) -> None:
    """Install llama-cpp-python into this Python's environment unless it is importable; exit 1 when pip fails."""
    if importlib.util.find_spec("llama_cpp") is not None:
        return
    requirement = phone_requirement()
    print(f"{verb}: building {requirement} (the `phone` extra, ~7 min on 2 cores, once): {why}", flush=True)
    rc = subprocess.call([sys.executable, "-m", "pip", "install", "-q", requirement])
    importlib.invalidate_caches()
    if rc != 0 or importlib.util.find_spec("llama_cpp") is None:
        raise SystemExit(f"error: installing {requirement} failed (pip exit status {rc}); {verb} needs it: "
                         f"{sys.executable} -m pip install '{requirement}'")
