"""Fixed 2D sin-cos absolute embedding, computed for the actual grid rather than resampled."""
import torch
from timm.layers import build_sincos2d_pos_embed

from ._grid import TABLE_CACHE, Grid


def sincos_2d_embed(grid: Grid, dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(H*W, dim) embedding in raster order (timm's builder, float32, cached per grid)."""
    grid = (int(grid[0]), int(grid[1]))
    key = ('sincos2d', dim, grid, device, dtype)
    return TABLE_CACHE.get(key, lambda: build_sincos2d_pos_embed(list(grid), dim, device=device).to(dtype))
