"""Patch-grid coordinates and the one cache every grid-dependent table goes through."""
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


class TableCache:
    """Least-recently-used store of grid tables keyed by (table kind, settings, grid, device).

    Bounded so that a sweep over many resolutions does not keep every table alive.
    """

    def __init__(self, max_entries: int = 64):
        self.max_entries = max_entries
        self._tables: 'OrderedDict[Hashable, object]' = OrderedDict()

    def get(self, key: Hashable, build: Callable[[], object]):
        if key in self._tables:
            self._tables.move_to_end(key)
            return self._tables[key]
        with torch.inference_mode(False):  # a table first built during inference must serve training too
            value = build()
        self._tables[key] = value
        if len(self._tables) > self.max_entries:
            self._tables.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._tables)


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

