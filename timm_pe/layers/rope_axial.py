"""RoPE-Axial (Heo et al., ECCV 2024): fixed frequencies, the first half of the pairs rotate with x,
the second half with y."""
from typing import Optional, Tuple

import torch

from . import grid as grids
from .grid import Grid
from .rotary import RotaryEncoding, ntk_band_scale, scaled_coords


def axial_frequencies(rot_dim: int, theta: float, device: Optional[torch.device] = None) -> torch.Tensor:
    """f_k = theta^(-4k/rot_dim) for k < rot_dim/4."""
    num_bands = rot_dim // 4
    return torch.pow(theta, -torch.arange(num_bands, device=device, dtype=torch.float32) / num_bands)


@grids.grid_table_builder('rope_axial')
def rope_axial_tables(grid: Grid, device: torch.device, rot_dim: int, theta: float, rope_scaling: str,
                      train_grid: Optional[Grid]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (1, H*W, rot_dim/2) float32."""
    x, y = scaled_coords(grid, rope_scaling, train_grid, device)
    freqs = axial_frequencies(rot_dim, theta, device)
    band_scale = ntk_band_scale(grid, rope_scaling, train_grid, rot_dim // 4, device)
    if band_scale is not None:
        freqs = freqs * band_scale
    angles = torch.cat([x[:, None] * freqs, y[:, None] * freqs], dim=-1).unsqueeze(0)
    return angles.cos(), angles.sin()


class RopeAxial(RotaryEncoding):
    """Axial rotary tables shared by all heads; built in float32 once per grid and cached."""

    def __init__(self, head_dim: int, theta: float = 100., rope_fraction: float = 1., rope_scaling: str = 'none',
                 train_grid: Optional[Grid] = None):
        super().__init__(head_dim, theta, rope_fraction, rope_scaling, train_grid)
        grids.TABLE_CACHE.hold(self, 'rope_axial')

    def tables(self, grid: Grid, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each (1, H*W, rot_dim/2) float32, on ``device``."""
        if torch.jit.is_scripting():  # TorchScript compiles no cache: the tables are built in the graph
            return rope_axial_tables(grid, device, self.rot_dim, self.theta, self.rope_scaling, self.train_grid)
        return grids.grid_table('rope_axial', grid, device, self.rot_dim, self.theta, self.rope_scaling,
                                self.train_grid)
