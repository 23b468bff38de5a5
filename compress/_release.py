"""Give the pages of tensors we are done with back to the OS, layer by layer.

transformers 5 loads safetensors lazily through mmap, and file-backed pages that were read once stay
resident (and counted in RSS) for as long as the file stays mapped, even after the tensor is dropped.
When the prune command owns the model, it calls `release` on each layer's old weights right after
cutting them, so peak memory stays near one copy of the model instead of old + new.

Only pages lying wholly inside a tensor's own bytes are touched, and only tensors the caller
promises nobody else uses. Linux only; elsewhere it does nothing.
"""
from __future__ import annotations

import ctypes
import mmap
import sys

import torch

_MADV_DONTNEED = 4
_libc = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL("libc.so.6", use_errno=True)
        _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    except OSError:
        _libc = None


def release(tensor: torch.Tensor) -> int:
    """Drop the resident pages of `tensor`'s data (its content is gone afterwards). Returns bytes released."""
    if _libc is None or tensor.device.type != "cpu" or tensor.numel() == 0:
        return 0
    page = mmap.PAGESIZE
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    first, last = -(-start // page) * page, (end // page) * page
    if last <= first:
        return 0
    if _libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), _MADV_DONTNEED) != 0:
        return 0
    return last - first
