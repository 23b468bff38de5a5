"""Read a GGUF file's header: metadata, tensor table, and each tensor's bytes, checked against the file.

llama.cpp's GGUF (v2 / v3): magic "GGUF", version, tensor and key counts, typed key/value metadata,
one entry per tensor (name, dimensions innermost first, ggml type, offset into the data section), then
the data section at the next multiple of `general.alignment`. gguf-py's GGUFReader parses every string
of the vocabulary into Python objects (seconds for a 49K-token vocabulary); this reader skips the large
string arrays it is not asked for and checks what a truncated or foreign file gets wrong: the magic, the
version, every read inside the file, every tensor's extent inside the file.
"""
from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
KEEP_STRING_ARRAYS = 64        # longer string arrays (vocabularies, merges) are skipped: only their length is kept


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]     # numpy order (outermost first): the reverse of GGUF's dimensions
    ggml_type: int
    offset: int                # from the start of the file
    nbytes: int

    @property
    def type_name(self) -> str:
        import gguf
        return gguf.GGMLQuantizationType(self.ggml_type).name


@dataclass(frozen=True)
class SkippedArray:
    """A long string array left unread (a vocabulary, merges): its length."""
    length: int


class GGUFFile:
    """One GGUF file, mapped read-only. ValueError (one line) when it is not a complete GGUF file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as err:       # ValueError: an empty file cannot be mapped
            raise ValueError(f"{self.path} is not a readable GGUF file ({getattr(err, 'strerror', None) or err})") from None
        self.size = len(self._map)
        if self._map[:4] != MAGIC:
            raise ValueError(f"{self.path} is not a GGUF file (no GGUF magic number at its start)")
        try:
            self._parse()
        except (struct.error, IndexError, UnicodeDecodeError, OverflowError, MemoryError):
            raise ValueError(f"{self.path} is truncated or corrupt: its GGUF header ends early or is malformed") from None

    # ---- parsing -------------------------------------------------------------------------------
    def _parse(self) -> None:
        self._pos = 4
        version = self._read("<I")
        if version not in VERSIONS:
            raise ValueError(f"{self.path}: GGUF version {version} is not supported (only {VERSIONS})")
        n_tensors, n_keys = self._read("<Q"), self._read("<Q")
        if n_tensors > self.size or n_keys > self.size:
            raise struct.error("counts beyond the file")
        self.metadata: dict = {}
        for _ in range(n_keys):
            key = self._string()
            self.metadata[key] = self._value(self._read("<I"))
        import gguf
        infos = []
        for _ in range(n_tensors):
            name, n_dims = self._string(), self._read("<I")
            dims = [self._read("<Q") for _ in range(n_dims)]
            kind, offset = self._read("<I"), self._read("<Q")
            try:
                block, type_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(kind)]
            except (ValueError, KeyError):
                raise ValueError(f"{self.path} is corrupt: tensor {name!r} has unknown ggml type {kind}") from None
            count = int(np.prod(dims)) if dims else 1
            if count % block:
                raise ValueError(f"{self.path} is corrupt: tensor {name!r} has {count} values, not whole blocks")
            infos.append((name, tuple(reversed(dims)), kind, offset, count // block * type_bytes))
        alignment = int(self.metadata.get("general.alignment", DEFAULT_ALIGNMENT))
        data_start = -(-self._pos // alignment) * alignment
        self.tensors = [TensorInfo(n, s, k, data_start + o, b) for n, s, k, o, b in infos]
        for t in self.tensors:
            if t.offset + t.nbytes > self.size:
                raise ValueError(f"{self.path} is truncated: tensor {t.name!r} ends at byte {t.offset + t.nbytes:,} "
                                 f"but the file has {self.size:,} bytes")

    def _read(self, fmt: str):
        value = struct.unpack_from(fmt, self._map, self._pos)[0]
        self._pos += struct.calcsize(fmt)
        return value

    def _string(self) -> str:
        length = self._read("<Q")
        if self._pos + length > self.size:
            raise struct.error("string beyond the file")
        text = self._map[self._pos:self._pos + length].decode("utf-8")
        self._pos += length
        return text

    def _value(self, kind: int):
        if kind in _SCALARS:
            return self._read(_SCALARS[kind])
        if kind == _STRING:
            return self._string()
        if kind != _ARRAY:
            raise struct.error(f"unknown metadata type {kind}")
        item, length = self._read("<I"), self._read("<Q")
        if item in _SCALARS:
            dtype = np.dtype(_SCALARS[item])
            end = self._pos + length * dtype.itemsize
            if end > self.size:
                raise struct.error("array beyond the file")
            values = np.frombuffer(self._map, dtype=dtype, count=length, offset=self._pos).tolist()
            self._pos = end
            return values
        if item == _STRING and length > KEEP_STRING_ARRAYS:
            for _ in range(length):                 # skip: only the lengths are read
                self._pos += 8 + struct.unpack_from("<Q", self._map, self._pos)[0]
            if self._pos > self.size:
                raise struct.error("array beyond the file")
            return SkippedArray(length)
        return [self._value(item) for _ in range(length)]

    # ---- access --------------------------------------------------------------------------------
    @property
    def architecture(self) -> str:
        arch = self.metadata.get("general.architecture")
        if not isinstance(arch, str):
            raise ValueError(f"{self.path} has no general.architecture: not a model GGUF file")
        return arch

    def arch_key(self, key: str, default=None):
        """`<architecture>.<key>` from the metadata."""
        return self.metadata.get(f"{self.architecture}.{key}", default)

    def tensor(self, info: TensorInfo) -> np.ndarray:
        """The tensor's values as float32 (quantized types dequantized), in numpy order."""
        import gguf
        raw = np.frombuffer(self._map, dtype=np.uint8, count=info.nbytes, offset=info.offset)
        kind = gguf.GGMLQuantizationType(info.ggml_type)
        if kind == gguf.GGMLQuantizationType.F32:
            return raw.view(np.float32).reshape(info.shape)
        if kind == gguf.GGMLQuantizationType.F16:
            return raw.view(np.float16).reshape(info.shape).astype(np.float32)
        rows = raw.reshape(-1, info.nbytes // max(1, int(np.prod(info.shape[:-1])))) if len(info.shape) > 1 else raw
        try:
            return gguf.quants.dequantize(rows, kind).reshape(info.shape)
        except NotImplementedError:
            raise ValueError(f"{self.path}: tensor {info.name!r} is stored as {kind.name}, which this version of the "
                             "gguf package cannot dequantize") from None
