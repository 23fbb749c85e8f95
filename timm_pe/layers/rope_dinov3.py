"""DINOv3's RoPE (Simeoni et al., 2025): axial rotation of patch-centre coordinates normalised to [-1, 1]
per axis, so every resolution spans the same range (a bigger image interpolates, never extrapolates),
with train-time coordinate augmentation: one shift, per-axis jitter and shared rescale per forward.

Pairs: the first rot_dim/4 rotate with y, the next rot_dim/4 with x, at angles 2 pi c / p_k with periods
p_k = theta^(4k/rot_dim) (base 100), in the rotate-half layout, as timm's ``RotaryEmbeddingDinoV3``.
"""
import math
from typing import Optional, Tuple

import torch

from . import grid as grids
from .grid import Grid
from .rotary import RotaryEncoding


@grids.grid_table_builder('rope_dinov3_coords')
def dinov3_coords(grid: Grid, device: torch.device) -> torch.Tensor:
    """(H*W, 2) patch-centre (y, x) coordinates in [-1, 1], raster order, float32."""
    axes = [torch.arange(0.5, s, device=device, dtype=torch.float32) / s for s in grid]
    return (2. * torch.stack(torch.meshgrid(axes, indexing='ij'), dim=-1) - 1.).flatten(0, 1)


def dinov3_periods(rot_dim: int, theta: float, device=None) -> torch.Tensor:
    return theta ** (2. * torch.arange(rot_dim // 4, device=device, dtype=torch.float32) / (rot_dim // 2))


def dinov3_angles(coords: torch.Tensor, periods: torch.Tensor) -> torch.Tensor:
    """(H*W, rot_dim/2) angles: y bands then x bands."""
    return (2 * math.pi * coords[:, :, None] / periods[None, None, :]).flatten(1)


@grids.grid_table_builder('rope_dinov3')
def dinov3_tables(grid: Grid, device: torch.device, rot_dim: int, theta: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Unaugmented (cos, sin), each (1, H*W, rot_dim/2) float32."""
    angles = dinov3_angles(dinov3_coords(grid, device), dinov3_periods(rot_dim, theta, device))
    return angles.cos()[None], angles.sin()[None]


def check_augmentation(shift: Optional[float], jitter: Optional[float], rescale: Optional[float]) -> None:
    for name, value, low in (('rope_shift_coords', shift, 0.), ('rope_jitter_coords', jitter, 1.),
                             ('rope_rescale_coords', rescale, 1.)):
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value >= low):
            raise ValueError(f'{name} must be None (off) or a finite number >= {low:g}, got {value!r}')


class RopeDinoV3(RotaryEncoding):
    """DINOv3 rotary tables. One module serves every layer (the registry marks it shared), so that the
    coordinate augmentation drawn by ``redraw()`` at the start of a training forward is the same in all
    layers, as in DINOv3; eval mode never augments.

    Args:
        shift_coords: shift both axes by U(-s, s) (in [-1, 1] units); None: off.
        jitter_coords: scale each axis by exp(U(-log J, log J)); None: off.
        rescale_coords: scale both axes by one exp(U(-log R, log R)); None: off. DINOv3 trains with 2.
    """
    scales_with_train_grid = False  # coordinates in [-1, 1] at every size: no rope_scaling hook

    def __init__(self, head_dim: int, theta: float = 100., rope_fraction: float = 1.,
                 shift_coords: Optional[float] = None, jitter_coords: Optional[float] = None,
                 rescale_coords: Optional[float] = None):
        super().__init__(head_dim, theta, rope_fraction)
        check_augmentation(shift_coords, jitter_coords, rescale_coords)
        self.shift_coords, self.jitter_coords, self.rescale_coords = shift_coords, jitter_coords, rescale_coords
        self._draw: Optional[Tuple[Optional[torch.Tensor], ...]] = None

    @torch.jit.export
    def augments(self) -> bool:
        """Whether this forward draws augmented coordinates (training, with any augmentation set)."""
        return self.training and (self.shift_coords is not None or self.jitter_coords is not None
                                  or self.rescale_coords is not None)

    def redraw(self) -> None:
        """Draw the next coordinate augmentation (the model calls this once per training forward). The
        draws are made on the CPU in float32, in DINOv3's order: shift (2), jitter (2), rescale (1)."""
        def log_uniform(n: int, factor: Optional[float]) -> Optional[torch.Tensor]:
            return None if factor is None else torch.empty(n).uniform_(-math.log(factor), math.log(factor)).exp()

        shift = None if self.shift_coords is None else torch.empty(2).uniform_(-self.shift_coords, self.shift_coords)
        jitter = log_uniform(2, self.jitter_coords)
        self._draw = (shift, jitter, log_uniform(1, self.rescale_coords))

    @torch.jit.ignore  # scripted models run it in Python: no jit.save
    def tables(self, grid: Grid, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each (1, H*W, rot_dim/2) float32, on ``device``; augmented while training."""
        if not self.augments():
            return grids.grid_table('rope_dinov3', grid, device, self.rot_dim, self.theta)
        if self._draw is None:
            self.redraw()
        coords = grids.grid_table('rope_dinov3_coords', grid, device)
        for i, draw in enumerate(self._draw):
            if draw is not None:
                draw = draw.to(device)
                coords = coords + draw if i == 0 else coords * draw
        angles = dinov3_angles(coords, dinov3_periods(self.rot_dim, self.theta, device))
        return angles.cos()[None], angles.sin()[None]

    def extra_repr(self) -> str:
        return (f'rot_dim={self.rot_dim}, theta={self.theta}, shift={self.shift_coords}, '
                f'jitter={self.jitter_coords}, rescale={self.rescale_coords}')
