"""Fixed 2D sin-cos absolute embedding, computed for the actual grid rather than resampled."""
import torch
from timm.layers import build_sincos2d_pos_embed

from . import grid as grids
from .grid import Grid


@grids.grid_table_builder('sincos2d')
def _build_sincos(grid: Grid, device: torch.device, dim: int) -> torch.Tensor:
    return build_sincos2d_pos_embed(list(grid), dim, device=device)


def sincos_2d_embed(grid: Grid, dim: int, device: torch.device) -> torch.Tensor:
    """(H*W, dim) float32 embedding in raster order on ``device`` (timm's builder, cached per grid)."""
    return grids.grid_table('sincos2d', grid, device, dim)
