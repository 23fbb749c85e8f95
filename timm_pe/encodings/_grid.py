"""Patch-grid coordinates and the bounded cache every grid-dependent table goes through."""
from collections import OrderedDict
from typing import Callable, Hashable, Tuple

import torch

Grid = Tuple[int, int]


def grid_coords(grid: Grid, device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Integer (x, y) patch positions in raster order, float32: token i sits at (i mod W, i div W)."""
    h, w = grid
    y, x = torch.meshgrid(
        torch.arange(h, device=device, dtype=torch.float32),
        torch.arange(w, device=device, dtype=torch.float32),
        indexing='ij',
    )
    return x.reshape(-1), y.reshape(-1)


class GridCache:
    """Least-recently-used store of tables keyed by (encoding settings, grid, device, dtype).

    Bounded so that a sweep over many resolutions does not keep every table alive. Under
    ``torch.compile`` the table is built inside the graph instead, so tracing never sees the dict.
    """

    def __init__(self, max_entries: int = 64):
        self.max_entries = max_entries
        self._tables: 'OrderedDict[Hashable, object]' = OrderedDict()

    def get(self, key: Hashable, build: Callable[[], object]):
        if torch.compiler.is_compiling():
            return build()
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

    def clear(self) -> None:
        self._tables.clear()


TABLE_CACHE = GridCache()
