"""LookHere (Fuller et al., NeurIPS 2024): each head sees only the patches in one 2D direction (a
half-plane, quadrant or wedge) and penalises them by distance, with slopes per head and per layer; the
class token is unrestricted. Nothing is learned, so any grid is an extrapolation of the same rule.

Directions follow the reference code (GreenCUBIC/lookhere): with dx = x_j - x_i and dy = y_j - y_i
(y grows downwards), 'up' keeps dy <= 0, 'tri_up' keeps the 90-degree wedge -dy >= |dx|, and a head
with several views keeps their intersection. Boundaries (same row, column or diagonal) stay visible.
"""
import math
from typing import Dict, Tuple

import torch
from torch import nn

from . import grid as grids
from .alibi2d import pad_prefix
from .grid import Grid, grid_coords

# one entry per head of a round: the views whose intersection that head sees
DIRECTIONS: Dict[str, Tuple[Tuple[str, ...], ...]] = {
    'halves': (('up',), ('down',), ('left',), ('right',)),  # LH-180
    'corners': (('up', 'left'), ('up', 'right'), ('down', 'left'), ('down', 'right')),  # LH-90, quadrants
    'triangles': (('tri_up',), ('tri_down',), ('tri_left',), ('tri_right',)),  # LH-90, wedges on the axes
    'diagonals': (('diag_up_right',), ('diag_up_left',), ('diag_down_right',), ('diag_down_left',)),
    'eighths': (('tri_up', 'left'), ('tri_down', 'left'), ('tri_left', 'up'), ('tri_right', 'up'),  # LH-45
                ('tri_up', 'right'), ('tri_down', 'right'), ('tri_left', 'down'), ('tri_right', 'down')),
}


def visible(view: str, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Which offsets (key minus query) the view keeps."""
    views = {
        'up': lambda: dy <= 0, 'down': lambda: dy >= 0, 'left': lambda: dx <= 0, 'right': lambda: dx >= 0,
        'tri_up': lambda: -dy >= dx.abs(), 'tri_down': lambda: dy >= dx.abs(),
        'tri_left': lambda: -dx >= dy.abs(), 'tri_right': lambda: dx >= dy.abs(),
        # two neighbouring wedges: a half-plane turned by 45 degrees
        'diag_up_right': lambda: dx >= dy, 'diag_up_left': lambda: dx + dy <= 0,
        'diag_down_right': lambda: dx + dy >= 0, 'diag_down_left': lambda: dy >= dx,
    }
    return views[view]()


def head_plan(directions: str, num_heads: int) -> Tuple[Tuple[Tuple[str, ...], float], ...]:
    """(views, slope) per head: heads go round the direction set, each round at half the previous slope
    (1/2, 1/4, ...), as the reference's slopes for each group of four heads. With 12 heads and a
    four-direction set this is the reference's assignment; with 3 or 6 heads the last round is partial."""
    if directions not in DIRECTIONS:
        raise ValueError(f'Unknown lookhere_directions {directions!r}; allowed: {tuple(DIRECTIONS)}')
    views = DIRECTIONS[directions]
    return tuple((views[h % len(views)], 2. ** -(1 + h // len(views))) for h in range(num_heads))


def layer_slope(layer: int, depth: int, layer_slopes: Tuple[float, float]) -> float:
    """The layer's factor: linear from layer_slopes[0] at the first layer to layer_slopes[1] at the last."""
    first, last = layer_slopes
    return first if depth == 1 else first + (last - first) * layer / (depth - 1)


@grids.grid_table_builder('lookhere')
def lookhere_table(grid: Grid, device: torch.device, directions: str, num_heads: int, num_prefix_tokens: int,
                   restriction_only: bool) -> torch.Tensor:
    """(heads, N, N), N = prefix + H*W: -head_slope * distance where the head looks, -inf elsewhere
    (float32), or only where it looks (bool) for ``restriction_only``; prefix rows and columns are open."""
    x, y = grid_coords(grid, device)
    dx, dy = x[None, :] - x[:, None], y[None, :] - y[:, None]
    distance = torch.sqrt(dx * dx + dy * dy)  # not torch.hypot, which ONNX has no function for
    tables = []
    for views, slope in head_plan(directions, num_heads):
        seen = torch.ones_like(distance, dtype=torch.bool)
        for view in views:
            seen &= visible(view, dx, dy)
        tables.append(seen if restriction_only else (-slope * distance).masked_fill(~seen, -math.inf))
    table = torch.stack(tables)
    if not num_prefix_tokens:
        return table
    if restriction_only:
        return nn.functional.pad(table, (num_prefix_tokens, 0, num_prefix_tokens, 0), value=True)
    return pad_prefix(table, num_prefix_tokens)


class LookHere(nn.Module):
    """LookHere bias of one layer: the cached per-head table times ``global_slope * layer_slope``, itself
    cached per layer factor.

    With ``global_slope = 0`` no distance penalty remains and the bias is the boolean mask of the
    directions, which SDPA takes as is.
    """
    kind = 'bias'

    def __init__(self, num_heads: int, layer: int = 0, depth: int = 1, directions: str = 'halves',
                 global_slope: float = 1., layer_slopes: Tuple[float, float] = (1.5, .5)):
        super().__init__()
        head_plan(directions, num_heads)  # validates
        if global_slope < 0 or len(layer_slopes) != 2 or min(layer_slopes) < 0:
            raise ValueError(f'LookHere slopes must be >= 0 (lookhere_global_slope, and two lookhere_layer_slopes '
                             f'for the first and last layer), got {global_slope} and {layer_slopes}')
        if not 0 <= layer < depth:
            raise ValueError(f'layer {layer} is outside a model of depth {depth}')
        self.num_heads = num_heads
        self.directions = directions
        self.factor = global_slope * layer_slope(layer, depth, tuple(layer_slopes))

    @torch.jit.ignore  # scripted models run it in Python: no jit.save
    def bias(self, grid: Grid, num_prefix_tokens: int, device: torch.device) -> torch.Tensor:
        """(heads, N, N) float32 additive bias (-inf where a head does not look), or a bool mask when
        there is no distance penalty."""
        restriction_only = self.factor == 0
        table = grids.grid_table('lookhere', grid, device, self.directions, self.num_heads, num_prefix_tokens,
                                 restriction_only)
        if restriction_only:
            return table
        if torch.compiler.is_compiling() or isinstance(table, torch.fx.Proxy):
            return table * self.factor
        return grids.derived_table((table,), ('lookhere', self.factor), lambda: table * self.factor)

    def extra_repr(self) -> str:
        return f'directions={self.directions!r}, factor={self.factor:g}'
