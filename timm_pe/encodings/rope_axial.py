"""RoPE-Axial (Heo et al., ECCV 2024): fixed frequencies, the first half of the pairs rotate with x,
the second half with y."""
from typing import Optional, Tuple

import torch
from torch import nn

from ._grid import TABLE_CACHE, Grid
from .rope import check_rope_scaling, ntk_band_scale, rope_rot_dim, scaled_coords


class RopeAxial(nn.Module):
    """Axial rotary tables shared by all heads; built in float32 once per grid and cached."""
    is_rotary = True

    def __init__(
            self,
            head_dim: int,
            theta: float = 100.,
            rope_fraction: float = 1.,
            rope_scaling: str = 'none',
            train_grid: Optional[Grid] = None,
    ):
        super().__init__()
        self.rot_dim = rope_rot_dim(head_dim, rope_fraction)
        self.theta = theta
        self.rope_scaling = check_rope_scaling(rope_scaling)
        self.train_grid = tuple(train_grid) if train_grid is not None else None

    @property
    def num_bands(self) -> int:
        return self.rot_dim // 4

    def frequencies(self, device=None) -> torch.Tensor:
        """f_k = theta^(-4k/rot_dim) for k < rot_dim/4."""
        k = torch.arange(self.num_bands, device=device, dtype=torch.float32)
        return self.theta ** (-k / self.num_bands)

    def _build(self, grid: Grid, device) -> Tuple[torch.Tensor, torch.Tensor]:
        x, y = scaled_coords(grid, self.rope_scaling, self.train_grid, device)
        freqs = self.frequencies(device)
        band_scale = ntk_band_scale(grid, self.rope_scaling, self.train_grid, self.num_bands, device)
        if band_scale is not None:
            freqs = freqs * band_scale
        angles = torch.cat([x[:, None] * freqs, y[:, None] * freqs], dim=-1).unsqueeze(0)
        return angles.cos(), angles.sin()

    def tables(self, grid: Grid, device=None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each (1, H*W, rot_dim/2) float32."""
        grid = (int(grid[0]), int(grid[1]))
        key = ('rope_axial', self.rot_dim, self.theta, self.rope_scaling, self.train_grid, grid, device)
        return TABLE_CACHE.get(key, lambda: self._build(grid, device))

    def extra_repr(self) -> str:
        return f'rot_dim={self.rot_dim}, theta={self.theta}, rope_scaling={self.rope_scaling!r}'
