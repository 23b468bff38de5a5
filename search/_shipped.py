"""Values the driver computes once per experiment (the teacher cache, OWL ratios, importance rankings) and
every trial reads: shipped through the Ray object store, never as a path on the driver's disk.

    setup.teacher_cache = Shipped.put(cache)     # driver: ray.put once
    cache = setup.teacher_cache.get()            # trial, on any node: fetched once per worker process

Pickling a Shipped keeps only the object reference (Ray tracks it, the driver owns it); without Ray (unit
tests, in-process use) it simply holds the value.
"""
from __future__ import annotations

from collections import OrderedDict

_CACHE: OrderedDict = OrderedDict()   # per worker process: trials reusing an actor fetch a value once
_CACHE_SIZE = 4                       # a few values per experiment; older experiments' values drop out


class Shipped:
    def __init__(self, *, ref=None, value=None):
        self.ref, self._value = ref, value

    @classmethod
    def put(cls, value) -> "Shipped":
        import ray
        if ray.is_initialized():
            return cls(ref=ray.put(value))
        return cls(value=value)

    def get(self):
        if self.ref is None:
            return self._value
        key = self.ref.hex()
        if key not in _CACHE:
            import ray
            _CACHE[key] = ray.get(self.ref)
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
        _CACHE.move_to_end(key)
        return _CACHE[key]

    def __getstate__(self):
        return {"ref": self.ref, "_value": self._value if self.ref is None else None}

    def __repr__(self) -> str:
        return f"Shipped({self.ref.hex()[:12] if self.ref is not None else 'local'})"
