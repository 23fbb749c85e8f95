"""Relative position bias (Swin v1, BEiT): a learned bias per head for every (dy, dx) offset."""
import torch
from torch import nn
from torch.nn import functional as F

from ._grid import TABLE_CACHE, Grid
from .alibi2d import pad_prefix


def relative_position_index(grid: Grid, device=None) -> torch.Tensor:
    """(H*W, H*W) index into a ((2H-1)(2W-1)) table: (dy + H-1)(2W-1) + (dx + W-1)."""
    h, w = grid
    y, x = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing='ij')
    y, x = y.reshape(-1), x.reshape(-1)
    dy = y[:, None] - y[None, :] + h - 1
    dx = x[:, None] - x[None, :] + w - 1
    return dy * (2 * w - 1) + dx


def cached_relative_position_index(like: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Flattened index for a grid on ``like``'s device, cached; FX records this call as one node."""
    grid = (int(grid[0]), int(grid[1]))
    return TABLE_CACHE.get(('rpb_index', grid, like.device),
                           lambda: relative_position_index(grid, like.device).reshape(-1))


torch.fx.wrap('cached_relative_position_index')


def resize_rpb_table(table: torch.Tensor, old_grid: Grid, new_grid: Grid) -> torch.Tensor:
    """Bicubic resize of a ((2H-1)(2W-1), heads) table to another grid, computed in float32."""
    if tuple(old_grid) == tuple(new_grid):
        return table
    heads = table.shape[-1]
    old_h, old_w = 2 * old_grid[0] - 1, 2 * old_grid[1] - 1
    new_h, new_w = 2 * new_grid[0] - 1, 2 * new_grid[1] - 1
    image = table.float().t().reshape(1, heads, old_h, old_w)
    image = F.interpolate(image, size=(new_h, new_w), mode='bicubic', align_corners=False)
    return image.reshape(heads, new_h * new_w).t().to(table.dtype)


class RelativePositionBias(nn.Module):
    """Learned table over all offsets of the model's patch grid.

    ``set_grid`` resizes the table for a new model resolution; a call at another grid (dynamic image
    size) resizes it on the fly, differentiably.
    """
    is_rotary = False

    def __init__(self, num_heads: int, grid: Grid):
        super().__init__()
        self.grid = tuple(grid)
        self.table = nn.Parameter(torch.zeros((2 * grid[0] - 1) * (2 * grid[1] - 1), num_heads))
        nn.init.trunc_normal_(self.table, std=.02)

    def set_grid(self, grid: Grid) -> None:
        grid = tuple(grid)
        if grid != self.grid:
            with torch.no_grad():
                self.table = nn.Parameter(resize_rpb_table(self.table.data, self.grid, grid))
            self.grid = grid

    def bias(self, grid: Grid, num_prefix_tokens: int, like: torch.Tensor) -> torch.Tensor:
        """(heads, N, N) additive logits bias, N = prefix + H*W."""
        grid = (int(grid[0]), int(grid[1]))
        table = resize_rpb_table(self.table, self.grid, grid)
        n = grid[0] * grid[1]
        bias = table[cached_relative_position_index(like, grid)].reshape(n, n, -1).permute(2, 0, 1)
        return pad_prefix(bias, num_prefix_tokens)
