"""Fixed 2D sin-cos absolute embedding, computed for the actual grid rather than resampled."""
import torch
from timm.layers.pos_embed_sincos import freq_bands

from . import grid as grids
from .grid import Grid, grid_coords


@grids.grid_table_builder('sincos2d')
def build_sincos_2d(grid: Grid, device: torch.device, dim: int) -> torch.Tensor:
    """timm's ``build_sincos2d_pos_embed`` layout (sin y, sin x, cos y, cos x; temperature 1e4), written
    with what TorchScript and export compile (timm's goes through a variadic ``ndgrid``)."""
    if dim % 4:
        raise ValueError(f'The sin-cos 2D embedding needs a dim divisible by 4, got {dim}')
    x, y = grid_coords(grid, device)
    angles = torch.stack([y, x], dim=1).unsqueeze(-1) * freq_bands(dim // 4, 10000., 1, device)
    return torch.stack([angles.sin(), angles.cos()], dim=1).flatten(1)


def sincos_2d_embed(grid: Grid, dim: int, device: torch.device) -> torch.Tensor:
    """(H*W, dim) float32 embedding in raster order on ``device``, cached per grid."""
    if torch.jit.is_scripting():  # TorchScript compiles no cache: the embedding is built in the graph
        return build_sincos_2d(grid, device, dim)
    return grids.grid_table('sincos2d', grid, device, dim)
