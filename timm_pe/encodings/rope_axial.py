"""RoPE-Axial (Heo et al., ECCV 2024): fixed frequencies, the first half of the pairs rotate with x,
the second half with y."""
from typing import Optional, Tuple

import torch

from ._grid import TABLE_CACHE, Grid
from .rope import RotaryEncoding, ntk_band_scale, scaled_coords


def axial_frequencies(rot_dim: int, theta: float, device=None) -> torch.Tensor:
    """f_k = theta^(-4k/rot_dim) for k < rot_dim/4."""
    num_bands = rot_dim // 4
    return theta ** (-torch.arange(num_bands, device=device, dtype=torch.float32) / num_bands)


def rope_axial_tables(like: torch.Tensor, grid: Grid, rot_dim: int, theta: float, rope_scaling: str,
                      train_grid: Optional[Grid]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cached (cos, sin) for a grid. ``like`` only names the device; FX records this call as one node."""
    grid = (int(grid[0]), int(grid[1]))
    device = like.device

    def build():
        x, y = scaled_coords(grid, rope_scaling, train_grid, device)
        freqs = axial_frequencies(rot_dim, theta, device)
        band_scale = ntk_band_scale(grid, rope_scaling, train_grid, rot_dim // 4, device)
        if band_scale is not None:
            freqs = freqs * band_scale
        angles = torch.cat([x[:, None] * freqs, y[:, None] * freqs], dim=-1).unsqueeze(0)
        return angles.cos(), angles.sin()

    return TABLE_CACHE.get(('rope_axial', rot_dim, theta, rope_scaling, train_grid, grid, device), build)


torch.fx.wrap('rope_axial_tables')


class RopeAxial(RotaryEncoding):
    """Axial rotary tables shared by all heads; built in float32 once per grid and cached."""

    def __init__(self, head_dim: int, theta: float = 100., rope_fraction: float = 1., rope_scaling: str = 'none',
                 train_grid: Optional[Grid] = None):
        super().__init__(head_dim, theta, rope_fraction, rope_scaling, train_grid)

    def frequencies(self) -> torch.Tensor:
        return axial_frequencies(self.rot_dim, self.theta)

    def tables(self, grid: Grid, like: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each (1, H*W, rot_dim/2) float32, on ``like``'s device."""
        return rope_axial_tables(like, grid, self.rot_dim, self.theta, self.rope_scaling, self.train_grid)
