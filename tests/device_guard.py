"""A CPU-side stand-in for "the model is on a GPU": the model stays on the CPU while torch's default
device is `meta`, so every tensor our code creates without naming a device lands on `meta` and the
first op that mixes it with the model's tensors raises the same "Expected all tensors to be on the
same device" (or "cannot copy out of meta") error a CUDA model raises. CI has no GPU; this catches the
bug class that crashed the first prune of every GPU trial (a CPU score accumulator next to CUDA weights,
a CPU index into a CUDA weight)."""
import contextlib

import torch


@contextlib.contextmanager
def foreign_default_device():
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)
