"""What every RoPE variant shares: rotated-dim rounding and the test-time resolution hooks (``rope_scaling``)."""
import math
import warnings
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from .grid import Grid, grid_coords

ROPE_SCALINGS = ('none', 'interp', 'ntk')
# the persistent buffer in which a RoPE layer's training grid travels with its weights
TRAIN_GRID_BUFFER = 'rope_train_grid'


def rope_rot_dim(head_dim: int, fraction: float) -> int:
    """Number of rotated dims for ``fraction`` of a head.

    Rounded to a multiple of 4 (two rotation pairs): RoPE-Axial needs as many x pairs as y pairs, and
    RoPE-Mixed initialises its frequencies in the same two halves. At least one pair per axis.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(f'rope_fraction must be in (0, 1], got {fraction}')
    if head_dim % 4:
        raise ValueError(f'RoPE needs a head dim divisible by 4, got {head_dim}')
    return min(head_dim, max(4, 4 * round(fraction * head_dim / 4)))


def check_rope_theta(theta: float) -> float:
    """The RoPE base: a positive finite number (0 or less gives NaN or constant angles)."""
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not 0 < theta < math.inf:
        raise ValueError(f'rope_theta must be a positive number (the frequency base, e.g. 100), got {theta!r}')
    return float(theta)


def check_rope_scaling(rope_scaling: str) -> str:
    if rope_scaling not in ROPE_SCALINGS:
        raise ValueError(f'Unknown rope_scaling {rope_scaling!r}; allowed: {ROPE_SCALINGS}')
    return rope_scaling


def scaled_coords(
        grid: Grid,
        rope_scaling: str,
        train_grid: Optional[Grid],
        device: Optional[torch.device] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Patch positions, squeezed onto the training grid's range for ``interp`` (position interpolation)."""
    x, y = grid_coords(grid, device)
    if rope_scaling == 'interp' and train_grid is not None:
        # scaled even where grid == train_grid (a factor of 1): no Python branch on the grid, so an export
        # with symbolic sizes keeps them symbolic
        x = x * (train_grid[1] / grid[1])
        y = y * (train_grid[0] / grid[0])
    return x, y


def ntk_band_scale(
        grid: Grid,
        rope_scaling: str,
        train_grid: Optional[Grid],
        num_bands: int,
        device: Optional[torch.device] = None,
) -> Optional[torch.Tensor]:
    """Per-band frequency factors for NTK-aware scaling, or None when no scaling applies.

    Band k of K is multiplied by s^(-k/(K-1)), s the grid growth factor: the fastest band is kept and
    the slowest is slowed by exactly s, which for theta^(-k/K) bands is NTK's base change
    theta -> theta * s^(K/(K-1)).
    """
    if rope_scaling != 'ntk' or train_grid is None or num_bands < 2:
        return None
    # no Python branch on the grid (a grid no larger than the training one gets factors of exactly 1), so an
    # export with symbolic sizes keeps them symbolic
    if torch.jit.is_scripting():
        growth = max(grid[0] / train_grid[0], grid[1] / train_grid[1], 1.)
    else:
        growth = torch.sym_max(torch.sym_max(grid[0] / train_grid[0], grid[1] / train_grid[1]), 1.)
    k = torch.arange(num_bands, device=device, dtype=torch.float32)
    return torch.pow(growth, -k / (num_bands - 1))


class RotaryEncoding(nn.Module):
    """Settings every RoPE variant shares: rotated dims, base, test-time scaling and the training grid
    that scaling refers to. Subclasses provide ``tables(grid, device) -> (cos, sin)``.

    The training grid is also a persistent buffer (``rope_train_grid``; zeros where unknown), so it travels
    with the weights: loading a state dict, by any path, makes ``rope_scaling`` refer to the grid the
    weights were trained at rather than to the grid this model was built with.
    """
    kind = 'rotary'
    # False for variants with no test-time hook (normalised coordinates): they need no training grid
    scales_with_train_grid = True

    def __init__(self, head_dim: int, theta: float, rope_fraction: float = 1., rope_scaling: str = 'none',
                 train_grid: Optional[Grid] = None):
        super().__init__()
        self.rot_dim = rope_rot_dim(head_dim, rope_fraction)
        self.theta = check_rope_theta(theta)
        self.rope_scaling = check_rope_scaling(rope_scaling)
        self.train_grid = tuple(int(s) for s in train_grid) if train_grid is not None else None
        if self.scales_with_train_grid:
            self.register_buffer(TRAIN_GRID_BUFFER, torch.tensor(self.train_grid or (0, 0), dtype=torch.int64))

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        key = prefix + TRAIN_GRID_BUFFER
        if not self.scales_with_train_grid:
            pass
        elif key not in state_dict:
            warnings.warn(
                f'The checkpoint does not record the grid its RoPE layers were trained at (saved before timm-pe '
                f'kept it with the weights): rope_scaling refers to the grid this model was built with, '
                f'{self.train_grid}. Build the model at its training size, or pass rope_train_img_size, so that '
                f"'interp' and 'ntk' scale from the right grid.", stacklevel=2)
            state_dict[key] = getattr(self, TRAIN_GRID_BUFFER)
        elif not state_dict[key].is_meta:
            recorded = tuple(int(s) for s in state_dict[key].tolist())
            self.train_grid = recorded if min(recorded) > 0 else None
        super()._load_from_state_dict(state_dict, prefix, *args)

    def extra_repr(self) -> str:
        return (f'rot_dim={self.rot_dim}, theta={self.theta}, rope_scaling={self.rope_scaling!r}, '
                f'train_grid={self.train_grid}')


def add_train_grids(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """``state_dict`` with the model's own training grid for every RoPE layer it does not record: for
    weights converted from elsewhere, whose training size the model was built from (its pretrained cfg)."""
    for name, module in model.named_modules():
        if isinstance(module, RotaryEncoding) and module.scales_with_train_grid:
            state_dict.setdefault(f'{name}.{TRAIN_GRID_BUFFER}', getattr(module, TRAIN_GRID_BUFFER).clone())
    return state_dict
