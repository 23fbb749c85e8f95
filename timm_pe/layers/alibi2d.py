"""2D ALiBi (Fuller et al., NeurIPS 2023): attention logits penalised by Euclidean patch distance
times a fixed per-head slope; nothing learned, so any grid works unchanged."""
from typing import List

import torch
from torch import nn

from . import grid as grids
from .grid import Grid, grid_coords


# 'press': Press et al.'s slopes for h heads; 'spread': the range their slopes span for 8 heads
# (2^-1 .. 2^-8, and for any h >= 8) spread geometrically over any head count
ALIBI_SLOPES = ('press', 'spread')


def _power_of_two_slopes(n: int) -> List[float]:
    return [2. ** (-8. * j / n) for j in range(1, n + 1)]


def alibi_slopes(num_heads: int, schedule: str = 'press') -> torch.Tensor:
    """Per-head ALiBi slopes.

    ``'press'`` (Press et al.): 2^(-8j/h), j = 1..h, for h a power of two; otherwise those of the nearest
    lower power of two followed by every other slope of twice that power. With few heads this drops the
    steep slopes (4 heads: 2^-2 .. 2^-8), so on a small grid the bias is weak.
    ``'spread'``: 2^-1 .. 2^-8 in equal log steps over the h heads (one head: 2^-1), the range
    Press et al. give 8 heads, so a few-head model keeps a strongly local head as well as a nearly flat one.
    """
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f'num_heads must be a positive int, got {num_heads}')
    if schedule != 'press' and schedule != 'spread':
        raise ValueError(f"alibi_slopes='{schedule}' is not known; allowed: 'press', 'spread'")
    if schedule == 'spread':
        step = 7. / (num_heads - 1) if num_heads > 1 else 0.
        return torch.tensor([2. ** (-1. - step * j) for j in range(num_heads)], dtype=torch.float32)
    lower = 1
    while 2 * lower <= num_heads:
        lower *= 2
    slopes = _power_of_two_slopes(lower) + _power_of_two_slopes(2 * lower)[0::2][:num_heads - lower]
    return torch.tensor(slopes, dtype=torch.float32)


def pad_prefix(bias: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """Give prefix tokens (class, registers) a zero bias to and from every token."""
    if not num_prefix_tokens:
        return bias
    p = num_prefix_tokens
    return nn.functional.pad(bias, (p, 0, p, 0))


@grids.grid_table_builder('alibi2d')
def alibi_bias(grid: Grid, device: torch.device, num_heads: int, num_prefix_tokens: int,
               slopes: str = 'press') -> torch.Tensor:
    """(heads, N, N) float32 bias, N = prefix + H*W."""
    x, y = grid_coords(grid, device)
    dx, dy = x[:, None] - x[None, :], y[:, None] - y[None, :]
    distance = torch.sqrt(dx * dx + dy * dy)  # not torch.hypot, which ONNX has no function for
    bias = -alibi_slopes(num_heads, slopes).to(device)[:, None, None] * distance
    return pad_prefix(bias, num_prefix_tokens)


class Alibi2d(nn.Module):
    """Fixed 2D ALiBi bias; the same for every layer, so built once per grid and cached."""
    kind = 'bias'

    def __init__(self, num_heads: int, slopes: str = 'press'):
        super().__init__()
        alibi_slopes(num_heads, slopes)  # a bad head count or schedule fails here, not at the first forward
        self.num_heads = num_heads
        grids.TABLE_CACHE.hold(self, 'alibi2d')
        self.slopes = slopes

    def extra_repr(self) -> str:
        return f'num_heads={self.num_heads}, slopes={self.slopes!r}'

    def bias(self, grid: Grid, num_prefix_tokens: int, device: torch.device) -> torch.Tensor:
        """(heads, N, N) float32 additive logits bias, N = prefix + H*W."""
        if torch.jit.is_scripting():  # TorchScript compiles no cache: the bias is built in the graph
            return alibi_bias(grid, device, self.num_heads, num_prefix_tokens, self.slopes)
        return grids.grid_table('alibi2d', grid, device, self.num_heads, num_prefix_tokens, self.slopes)
