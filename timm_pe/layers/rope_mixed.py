"""RoPE-Mixed (Heo et al., ECCV 2024): learnable 2D frequencies per head, so a pair can rotate along
any direction (diagonals included), not only x or y."""
import math
from typing import Optional, Tuple

import torch
from torch import nn

from . import grid as grids
from .grid import Grid
from .rotary import RotaryEncoding, ntk_band_scale, scaled_coords


def init_mixed_frequencies(num_heads: int, rot_dim: int, theta: float = 10.) -> torch.Tensor:
    """(2, heads, rot_dim/2) frequencies: magnitudes theta^(-4k/rot_dim) along a random direction per
    head, the second half of the pairs at a right angle to the first."""
    mag = theta ** (-torch.arange(rot_dim // 4, dtype=torch.float32) / (rot_dim // 4))
    angle = torch.rand(num_heads, 1) * 2 * math.pi
    fx = torch.cat([mag * torch.cos(angle), mag * torch.cos(angle + math.pi / 2)], dim=-1)
    fy = torch.cat([mag * torch.sin(angle), mag * torch.sin(angle + math.pi / 2)], dim=-1)
    return torch.stack([fx, fy])


@grids.grid_table_builder('rope_mixed_coords')
def mixed_coords(grid: Grid, device: torch.device, rot_dim: int, rope_scaling: str,
                 train_grid: Optional[Grid]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(H*W, 2) positions and (rot_dim/2,) per-pair frequency factors (NTK scaling, else ones)."""
    x, y = scaled_coords(grid, rope_scaling, train_grid, device)
    band_scale = ntk_band_scale(grid, rope_scaling, train_grid, rot_dim // 4, device)
    if band_scale is None:
        band_scale = torch.ones(rot_dim // 4, device=device)
    return torch.stack([x, y], dim=-1), band_scale.repeat(2)


class RopeMixed(RotaryEncoding):
    """Per-head learnable rotary frequencies of one attention layer. While the frequencies train, the tables
    are rebuilt from them each call (only the coordinates are cached); where no gradient reaches them
    (inference), the tables are cached until the frequencies change."""
    def __init__(self, head_dim: int, num_heads: int, theta: float = 10., rope_fraction: float = 1.,
                 rope_scaling: str = 'none', train_grid: Optional[Grid] = None):
        super().__init__(head_dim, theta, rope_fraction, rope_scaling, train_grid)
        self.num_heads = num_heads
        grids.TABLE_CACHE.hold(self, 'rope_mixed_coords')
        self.freqs = nn.Parameter(torch.empty(2, num_heads, self.rot_dim // 2))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.freqs.copy_(init_mixed_frequencies(self.num_heads, self.rot_dim, self.theta))

    def tables(self, grid: Grid, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each (heads, H*W, rot_dim/2) float32, differentiable in ``freqs``."""
        if torch.jit.is_scripting():  # TorchScript compiles no cache: the coordinates are built in the graph
            coords, band_scale = mixed_coords(grid, device, self.rot_dim, self.rope_scaling, self.train_grid)
            return self._build_tables(coords, band_scale)
        coords, band_scale = grids.grid_table('rope_mixed_coords', grid, device, self.rot_dim,
                                              self.rope_scaling, self.train_grid)
        freqs = self.freqs
        if isinstance(freqs, torch.fx.Proxy) or torch.compiler.is_compiling() or torch.jit.is_tracing() \
                or (torch.is_grad_enabled() and freqs.requires_grad) or freqs.is_inference():
            return self._build_tables(coords, band_scale)
        return self._kept_tables(coords, band_scale)

    def _kept_tables(self, coords: torch.Tensor, band_scale: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The tables built once per grid until the frequencies change (TorchScript parses no lambda)."""
        return grids.derived_table((self.freqs, coords, band_scale), 'rope_mixed',
                                   lambda: self._build_tables(coords, band_scale))

    def _build_tables(self, coords: torch.Tensor, band_scale: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        freqs = self.freqs.float() * band_scale
        # elementwise, not einsum: autocast would run a matmul in half precision
        angles = coords[:, 0, None] * freqs[0, :, None] + coords[:, 1, None] * freqs[1, :, None]
        return angles.cos(), angles.sin()
