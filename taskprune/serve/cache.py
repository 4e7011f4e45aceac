"""An LRU cache bounded by the bytes of what it holds, not by a count: task models differ in size."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")


class ByteLRU(Generic[V]):
    """Least-recently-used entries are evicted until the total size is within ``max_bytes``.

    An entry larger than the whole bound is not kept (the caller still uses it once). Thread-safe: the server
    cuts models in a worker thread while the event loop reads the cache for /v1/tasks.
    """

    def __init__(self, max_bytes: int, on_evict: Callable[[str, int], None] | None = None) -> None:
        if max_bytes < 0:
            raise ValueError(f"cache size must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[V, int]] = OrderedDict()
        self._total = 0  # kept with the items, under the lock: readers on other threads never iterate
        self._lock = threading.Lock()
        self._on_evict = on_evict

    def get(self, key: str) -> V | None:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key][0]

    def put(self, key: str, value: V, size: int) -> bool:
        """Insert (or replace) ``key``; returns False when it is too large to be kept at all."""
        with self._lock:
            self._drop(key)
            if size > self.max_bytes:
                return False
            self._items[key] = (value, size)
            self._total += size
            while self._total > self.max_bytes:
                old, (_, old_size) = self._items.popitem(last=False)
                self._total -= old_size
                if self._on_evict:
                    self._on_evict(old, old_size)
            return True

    def _drop(self, key: str) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self._total -= item[1]

    def pop(self, key: str) -> None:
        with self._lock:
            self._drop(key)

    def keys(self) -> list[str]:
        """Least recently used first."""
        with self._lock:
            return list(self._items)

    def size_of(self, key: str) -> int | None:
        with self._lock:
            item = self._items.get(key)
            return None if item is None else item[1]

    @property
    def total_bytes(self) -> int:
        return self._total

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        return len(self._items)
