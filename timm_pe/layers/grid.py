"""Patch-grid coordinates and the one cache every grid-dependent table goes through."""
import os
import threading
import weakref
from collections import OrderedDict
from typing import Callable, Dict, Hashable, Optional, Tuple

import torch

Grid = Tuple[int, int]

_BUILDERS: Dict[str, Callable] = {}


def grid_coords(grid: Grid, device: Optional[torch.device] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Integer (x, y) patch positions in raster order, float32: token i sits at (i mod W, i div W)."""
    h, w = grid
    y, x = torch.meshgrid(
        torch.arange(h, device=device, dtype=torch.float32),
        torch.arange(w, device=device, dtype=torch.float32),
        indexing='ij',
    )
    return x.reshape(-1), y.reshape(-1)


CACHE_LIMIT_ENV = 'TIMM_PE_TABLE_CACHE_MB'
DEFAULT_CACHE_MB = 512


def _nbytes(value) -> int:
    """Bytes of the tensors in a table (a tensor or a tuple of them); meta tensors take none."""
    tensors = value if isinstance(value, (tuple, list)) else (value,)
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor) and not t.is_meta)


def _limit_from_env() -> int:
    text = os.environ.get(CACHE_LIMIT_ENV, str(DEFAULT_CACHE_MB))
    try:
        mb = float(text)
    except ValueError:
        raise ValueError(f'${CACHE_LIMIT_ENV}={text!r} is not a number of MiB (e.g. 512; 0 disables the cache)') from None
    if mb < 0:
        raise ValueError(f'${CACHE_LIMIT_ENV}={text!r}: the grid-table cache limit must be >= 0 MiB')
    return int(mb * 2 ** 20)


class TableCache:
    """Least-recently-used store of grid tables keyed by (table kind, settings, grid, device).

    Bounded in bytes (``max_bytes``; default ``$TIMM_PE_TABLE_CACHE_MB`` MiB, else 512), so that a sweep over
    many resolutions does not keep every table alive; a table larger than the limit is built for its call
    and not kept. Modules that use a kind of table ``hold`` it: once the last of them is garbage-collected,
    the tables of that kind are freed with it rather than outliving the model. Tables derived from changing
    tensors (``derived``) share the same bound.
    """

    def __init__(self, max_bytes: Optional[int] = None):
        self._tables: 'OrderedDict[Hashable, object]' = OrderedDict()
        self._sizes: Dict[Hashable, int] = {}
        self._holders: Dict[Hashable, 'weakref.WeakSet'] = {}
        self._lock = threading.Lock()
        self._released: list = []  # kinds whose last holder went while the lock was taken
        self._sources: Dict[Hashable, tuple] = {}  # derived key -> (source states, weak refs to the sources)
        self._orphaned: list = []  # derived keys whose source died while the lock was taken
        self.nbytes = 0
        self.max_bytes = _limit_from_env() if max_bytes is None else max_bytes

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    @max_bytes.setter
    def max_bytes(self, value: int) -> None:
        """A new limit, applied at once (0 disables caching)."""
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f'max_bytes must be an int >= 0, got {value!r}')
        self._max_bytes = value
        with self._lock:
            self._evict()

    def get(self, key: Hashable, build: Callable[[], object]):
        with self._lock:
            if key in self._tables:
                self._tables.move_to_end(key)
                return self._tables[key]
        with torch.inference_mode(False):  # a table first built during inference must serve training too
            value = build()
        with self._lock:
            if key not in self._tables:
                self._store(key, value)
            self._drop_released()
        return value

    def derived(self, sources: Tuple[torch.Tensor, ...], settings: Hashable, build: Callable[[], object]):
        """A table computed (without gradient) from tensors that may change, such as a parameter or another
        table: kept until one of ``sources`` is replaced, updated in place (its version), moved or cast, and
        freed with them. A parameter source is also compared with a copy of its values, since a write
        through ``.data`` (as EMA teachers update) bumps no version; the parameters behind tables are small.
        Off the CPU that comparison would wait for the device on every call, so there tables derived from
        parameters are built afresh each call. Callers skip it where gradients must flow or a tracer records."""
        if any(isinstance(s, torch.nn.Parameter) and s.device.type != 'cpu' for s in sources):
            with torch.no_grad():
                return build()
        key = ('derived', settings, tuple(id(s) for s in sources))
        states = tuple((s._version, s.data_ptr(), s.device, s.dtype) for s in sources)
        with self._lock:
            known = self._sources.get(key)
            if (known is not None and known[0] == states and key in self._tables
                    and all(ref() is s for ref, s in zip(known[1], sources))
                    and all(copy is None or torch.equal(copy, s) for copy, s in zip(known[2], sources))):
                self._tables.move_to_end(key)
                return self._tables[key]
        with torch.inference_mode(False), torch.no_grad():
            value = build()
            copies = tuple(s.detach().clone() if isinstance(s, torch.nn.Parameter) else None for s in sources)
        refs = tuple(weakref.ref(s, lambda _, key=key: self._orphan(key)) for s in sources)
        with self._lock:
            if key in self._tables:
                self._pop(key)
            if self._store(key, value):
                self._sources[key] = (states, refs, copies)
            self._drop_released()
        return value

    def _store(self, key: Hashable, value) -> bool:
        size = _nbytes(value)
        if size > self._max_bytes:
            return False
        self._tables[key] = value
        self._sizes[key] = size
        self.nbytes += size
        self._evict()
        return key in self._tables

    def hold(self, owner: object, kind: Hashable) -> None:
        """Keep ``kind`` tables only while some holder lives: ``owner`` (a module using them) is one."""
        holders = self._holders.setdefault(kind, weakref.WeakSet())
        if owner not in holders:
            holders.add(owner)
            weakref.finalize(owner, self._release, kind)

    def clear(self) -> None:
        with self._lock:
            self._tables.clear()
            self._sizes.clear()
            self._sources.clear()
            self.nbytes = 0

    def _orphan(self, key: Hashable) -> None:
        self._orphaned.append(key)
        self._drop_if_free()

    def _release(self, kind: Hashable) -> None:
        self._released.append(kind)
        self._drop_if_free()

    def _drop_if_free(self) -> None:
        """Called from garbage collection: drop now, or leave it to the thread holding the lock."""
        if self._lock.acquire(blocking=False):
            try:
                self._drop_released()
            finally:
                self._lock.release()

    def _drop_released(self) -> None:
        while self._orphaned:
            key = self._orphaned.pop()
            known = self._sources.get(key)
            if known is not None and any(ref() is None for ref in known[1]):  # not a newer entry's sources
                self._pop(key)
        while self._released:
            kind = self._released.pop()
            if not any(True for _ in self._holders.get(kind, ())):  # no live holder is left
                for key in [k for k in self._tables if _kind(k) == kind]:
                    self._pop(key)

    def _evict(self) -> None:
        while self.nbytes > self._max_bytes:
            self._pop(next(iter(self._tables)))

    def _pop(self, key: Hashable) -> None:
        del self._tables[key]
        self.nbytes -= self._sizes.pop(key)
        self._sources.pop(key, None)

    def __len__(self) -> int:
        return len(self._tables)


def _kind(key: Hashable) -> Hashable:
    return key[0] if isinstance(key, tuple) else key


TABLE_CACHE = TableCache()


def grid_table_builder(kind: str):
    """Register ``build(grid, device, *settings)`` as the builder of the tables named ``kind``."""
    def register(build: Callable) -> Callable:
        _BUILDERS[kind] = build
        return build
    return register


def grid_table(kind: str, grid: Grid, device: torch.device, *settings):
    """The ``kind`` table for a patch grid on ``device``, built once and cached.

    Under ``torch.compile`` and ``torch.export``, and under FX when the grid is symbolic (dynamic image size),
    the table is built inside the graph from the (symbolic) sizes; FX with a fixed grid stores the cached
    table as a graph constant, which TorchScript can compile. ``settings`` must be hashable: they are part of
    the cache key.
    """
    build = _BUILDERS[kind]
    if torch.compiler.is_compiling() or any(isinstance(v, torch.fx.Proxy) for v in (grid[0], grid[1], device)):
        return build(grid, device, *settings)
    grid = (int(grid[0]), int(grid[1]))
    return TABLE_CACHE.get((kind, settings, grid, device), lambda: build(grid, device, *settings))


def derived_table(sources: Tuple[torch.Tensor, ...], settings: Hashable, build: Callable[[], object]):
    """``build()``, kept in the table cache until a tensor of ``sources`` changes (``TableCache.derived``)."""
    return TABLE_CACHE.derived(sources, settings, build)
