"""The key/value cache: a preallocated buffer plus a length.

Decoding appends one (or a few) tokens at a time; every layer keeps the keys and values of all
earlier positions so they are computed once. Speculative decoding also needs to *forget*: after
the target rejects a drafted token, the keys and values written for it must go. Because the buffer
keeps every position and only `length` says which are valid, `truncate(n)` is a single assignment,
also on sliding-window layers (a cache that dropped keys older than the window could not roll
back across the window's edge).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minispec.config import GemmaConfig


@dataclass
class KVCache:
    keys: np.ndarray  # (n_layers, capacity, n_kv_heads, head_dim)
    values: np.ndarray  # (n_layers, capacity, n_kv_heads, head_dim)
    length: int = 0  # positions [0, length) are valid

    @property
    def capacity(self) -> int:
        return self.keys.shape[1]

    def reserve(self, n_new: int) -> None:
        """Make room for n_new more positions, doubling the buffer when it is full."""
        needed = self.length + n_new
        if needed <= self.capacity:
            return
        new_capacity = max(needed, 2 * self.capacity)
        grow = [(0, 0), (0, new_capacity - self.capacity), (0, 0), (0, 0)]
        self.keys = np.pad(self.keys, grow)
        self.values = np.pad(self.values, grow)

    def truncate(self, n: int) -> None:
        """Roll back to the first n positions: what was written after them no longer exists."""
        if not 0 <= n <= self.length:
            raise ValueError(f"truncate({n}): the cache holds {self.length} positions")
        self.length = n


def new_cache(config: GemmaConfig, capacity: int = 1024) -> KVCache:
    shape = (config.num_hidden_layers, capacity, config.num_key_value_heads, config.head_dim)
    return KVCache(np.zeros(shape, np.float32), np.zeros(shape, np.float32))
