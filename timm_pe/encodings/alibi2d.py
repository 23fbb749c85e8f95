"""2D ALiBi (Fuller et al., NeurIPS 2023): attention logits penalised by Euclidean patch distance
times a fixed per-head slope; nothing learned, so any grid works unchanged."""
import math

import torch
from torch import nn

from ._grid import TABLE_CACHE, Grid, grid_coords


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """ALiBi slopes (Press et al.): 2^(-8j/h) for h a power of two; otherwise those of the nearest
    lower power of two followed by every other slope of twice that power."""
    def power_of_two_slopes(n: int):
        return [2 ** (-8 * j / n) for j in range(1, n + 1)]

    lower = 2 ** math.floor(math.log2(num_heads))
    slopes = power_of_two_slopes(lower)
    slopes += power_of_two_slopes(2 * lower)[0::2][:num_heads - lower]
    return torch.tensor(slopes, dtype=torch.float32)


def pad_prefix(bias: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """Give prefix tokens (class, registers) a zero bias to and from every token."""
    if not num_prefix_tokens:
        return bias
    p = num_prefix_tokens
    return nn.functional.pad(bias, (p, 0, p, 0))


def alibi_bias(like: torch.Tensor, grid: Grid, num_heads: int, num_prefix_tokens: int) -> torch.Tensor:
    """Cached bias for a grid on ``like``'s device; FX records this call as one node."""
    grid = (int(grid[0]), int(grid[1]))
    device = like.device

    def build():
        x, y = grid_coords(grid, device)
        distance = torch.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :])
        bias = -alibi_slopes(num_heads).to(device)[:, None, None] * distance
        return pad_prefix(bias, num_prefix_tokens)

    return TABLE_CACHE.get(('alibi2d', num_heads, grid, num_prefix_tokens, device), build)


torch.fx.wrap('alibi_bias')


class Alibi2d(nn.Module):
    """Fixed 2D ALiBi bias; the same for every layer, so built once per grid and cached."""
    is_rotary = False

    def __init__(self, num_heads: int):
        super().__init__()
        self.num_heads = num_heads

    def bias(self, grid: Grid, num_prefix_tokens: int, like: torch.Tensor) -> torch.Tensor:
        """(heads, N, N) float32 additive logits bias, N = prefix + H*W."""
        return alibi_bias(like, grid, self.num_heads, num_prefix_tokens)
