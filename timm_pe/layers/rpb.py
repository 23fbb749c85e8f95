"""Relative position bias (Swin v1, BEiT): a learned bias per head for every (dy, dx) offset.

One implementation for ViT (a table over the whole patch grid) and Swin (a table over the window), with
timm's parameter name and layout, so timm's Swin checkpoints need no conversion of the table itself.
"""
from typing import Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from . import grid as grids
from .alibi2d import pad_prefix
from .grid import Grid

# the persistent buffer in which an RPB table's grid travels with it
GRID_BUFFER = 'grid_size'


@grids.grid_table_builder('rpb_index')
def relative_position_index(grid: Grid, device: Optional[torch.device] = None) -> torch.Tensor:
    """(H*W, H*W) index into a ((2H-1)(2W-1)) table: (dy + H-1)(2W-1) + (dx + W-1)."""
    h, w = grid
    y, x = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing='ij')
    y, x = y.reshape(-1), x.reshape(-1)
    dy = y[:, None] - y[None, :] + h - 1
    dx = x[:, None] - x[None, :] + w - 1
    return dy * (2 * w - 1) + dx


def resize_rpb_table(table: torch.Tensor, old_grid: Grid, new_grid: Grid) -> torch.Tensor:
    """Bicubic resize of a ((2H-1)(2W-1), heads) table to another grid, computed in float32; differentiable."""
    if not torch.compiler.is_compiling() and old_grid[0] == new_grid[0] and old_grid[1] == new_grid[1]:
        return table  # compiled (export with symbolic sizes) it always resamples: same size is the identity
    heads = table.shape[-1]
    new_h, new_w = 2 * new_grid[0] - 1, 2 * new_grid[1] - 1
    if table.is_meta:
        return table.new_empty(new_h * new_w, heads)
    image = table.float().t().reshape(1, heads, 2 * old_grid[0] - 1, 2 * old_grid[1] - 1)
    image = F.interpolate(image, size=(new_h, new_w), mode='bicubic', align_corners=False)
    return image.reshape(heads, new_h * new_w).t().to(table.dtype)


def table_grid(rows: int, expected: Optional[Grid] = None, name: str = 'relative_position_bias_table') -> Grid:
    """Grid of a checkpoint's table with ``rows`` offsets, for checkpoints that do not record it: ``expected``
    where it fits, else a square grid."""
    if expected is not None and rows == (2 * expected[0] - 1) * (2 * expected[1] - 1):
        return tuple(expected)
    side = int(round(rows ** 0.5))
    if side * side != rows or side % 2 == 0:
        raise ValueError(f'{name}: cannot infer the grid of a table with {rows} rows; only tables of the '
                         f'model\'s grid {expected} or of square grids ((2G-1)^2 rows) can be resized without a recorded '
                         f'grid ({GRID_BUFFER})')
    return (side + 1) // 2, (side + 1) // 2


class RelativePositionBias(nn.Module):
    """Learned table over all offsets of a grid (a ViT's patch grid, a Swin window).

    ``set_grid`` resizes the table for a new model resolution; a call at another grid (dynamic image
    size) resizes it on the fly, differentiably. The table's grid is also a persistent buffer
    (``grid_size``), so a state dict of any grid, square or not, loads at any other: the table is resized
    to this module's grid on load (a checkpoint without the buffer has its grid inferred, see ``table_grid``).
    """
    kind = 'bias'

    def __init__(self, num_heads: int, grid: Grid, device=None, dtype=None):
        super().__init__()
        self.grid: Tuple[int, int] = tuple(grid)
        self.relative_position_bias_table = nn.Parameter(
            torch.empty((2 * grid[0] - 1) * (2 * grid[1] - 1), num_heads, device=device, dtype=dtype))
        self.register_buffer(GRID_BUFFER, torch.tensor(self.grid, dtype=torch.int64, device=device))
        self.reset_parameters()
        grids.TABLE_CACHE.hold(self, 'rpb_index')

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.relative_position_bias_table, std=.02)

    def set_grid(self, grid: Grid) -> None:
        grid = tuple(grid)
        if grid != self.grid:
            table = self.relative_position_bias_table
            with torch.no_grad():
                resized = resize_rpb_table(table.data, self.grid, grid)
                getattr(self, GRID_BUFFER).copy_(torch.tensor(grid))
            self.relative_position_bias_table = nn.Parameter(resized, requires_grad=table.requires_grad)
            self.grid = grid

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        table_key, grid_key = prefix + 'relative_position_bias_table', prefix + GRID_BUFFER
        if table_key in state_dict:
            table = state_dict[table_key]
            recorded = state_dict.get(grid_key)
            if recorded is None or recorded.is_meta:
                old_grid = table_grid(table.shape[0], self.grid, table_key)
            else:
                old_grid = tuple(int(s) for s in recorded.tolist())
                if table.shape[0] != (2 * old_grid[0] - 1) * (2 * old_grid[1] - 1):
                    raise ValueError(f'{table_key} has {table.shape[0]} rows, not the (2H-1)(2W-1) of the grid '
                                     f'{old_grid} recorded in {grid_key}')
            state_dict[table_key] = resize_rpb_table(table, old_grid, self.grid)
            state_dict[grid_key] = getattr(self, GRID_BUFFER)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def bias(self, grid: Grid, num_prefix_tokens: int, device: torch.device) -> torch.Tensor:
        """(heads, N, N) additive logits bias, N = prefix + H*W."""
        if torch.jit.is_scripting():  # TorchScript compiles no cache: table and index are built in the graph
            table = resize_rpb_table(self.relative_position_bias_table, self.grid, grid)
            index = relative_position_index(grid, device)
        else:
            table = self.resized_table(grid)
            index = grids.grid_table('rpb_index', grid, device)
        bias = table[index].permute(2, 0, 1)
        return pad_prefix(bias, num_prefix_tokens)

    def resized_table(self, grid: Grid) -> torch.Tensor:
        """The table resized to ``grid`` (bicubic). Cached per grid while no gradient can flow into it (eval,
        ``no_grad``, a frozen table) until the table changes (an optimizer step, a load, a move); resampled
        in the graph when it may need gradients, and when traced, compiled or exported, where the grid may
        be symbolic."""
        table = self.relative_position_bias_table
        if (torch.compiler.is_compiling() or torch.jit.is_tracing() or isinstance(table, torch.fx.Proxy)
                or any(isinstance(side, torch.fx.Proxy) for side in grid) or table.is_meta
                or (table.requires_grad and torch.is_grad_enabled())):
            return resize_rpb_table(table, self.grid, grid)
        grid = (int(grid[0]), int(grid[1]))
        if grid == self.grid:
            return table
        old_grid = self.grid
        return grids.derived_table((table,), ('rpb_resized', old_grid, grid),
                                   lambda: resize_rpb_table(table, old_grid, grid))

    def extra_repr(self) -> str:
        return f'grid={self.grid}'
