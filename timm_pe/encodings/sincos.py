"""Fixed 2D sin-cos absolute embedding, computed for the actual grid rather than resampled."""
import torch
from timm.layers import build_sincos2d_pos_embed

from ._grid import TABLE_CACHE, Grid


def sincos_2d_embed(like: torch.Tensor, grid: Grid, dim: int) -> torch.Tensor:
    """(H*W, dim) float32 embedding in raster order on ``like``'s device (timm's builder, cached per
    grid); FX records this call as one node."""
    grid = (int(grid[0]), int(grid[1]))
    return TABLE_CACHE.get(('sincos2d', dim, grid, like.device),
                           lambda: build_sincos2d_pos_embed(list(grid), dim, device=like.device))


torch.fx.wrap('sincos_2d_embed')
