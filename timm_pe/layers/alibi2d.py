"""2D ALiBi (Fuller et al., NeurIPS 2023): attention logits penalised by Euclidean patch distance
times a fixed per-head slope; nothing learned, so any grid works unchanged."""
from typing import List

import torch
from torch import nn

from . import grid as grids
from .grid import Grid, grid_coords


def _power_of_two_slopes(n: int) -> List[float]:
    return [2. ** (-8. * j / n) for j in range(1, n + 1)]


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """ALiBi slopes (Press et al.): 2^(-8j/h) for h a power of two; otherwise those of the nearest
    lower power of two followed by every other slope of twice that power."""
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
def alibi_bias(grid: Grid, device: torch.device, num_heads: int, num_prefix_tokens: int) -> torch.Tensor:
    """(heads, N, N) float32 bias, N = prefix + H*W."""
    x, y = grid_coords(grid, device)
    dx, dy = x[:, None] - x[None, :], y[:, None] - y[None, :]
    distance = torch.sqrt(dx * dx + dy * dy)  # not torch.hypot, which ONNX has no function for
    bias = -alibi_slopes(num_heads).to(device)[:, None, None] * distance
    return pad_prefix(bias, num_prefix_tokens)


class Alibi2d(nn.Module):
    """Fixed 2D ALiBi bias; the same for every layer, so built once per grid and cached."""
    kind = 'bias'

    def __init__(self, num_heads: int):
        super().__init__()
        self.num_heads = num_heads

    def bias(self, grid: Grid, num_prefix_tokens: int, device: torch.device) -> torch.Tensor:
        """(heads, N, N) float32 additive logits bias, N = prefix + H*W."""
        if torch.jit.is_scripting():  # TorchScript compiles no cache: the bias is built in the graph
            return alibi_bias(grid, device, self.num_heads, num_prefix_tokens)
        return grids.grid_table('alibi2d', grid, device, self.num_heads, num_prefix_tokens)
