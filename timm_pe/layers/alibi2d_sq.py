"""2D ALiBi with squared Euclidean distance, as extra q/k dimensions instead of a mask.

bias_ij = -m_h |r_i - r_j|^2 = -m_h |r_i|^2 + 2 m_h r_i.r_j - m_h |r_j|^2, and the first term is the same
for a whole softmax row, so it can go. What is left is a dot product: the query gains
m_h [2x_i, 2y_i, 1, |r_i|^2], the key [x_j, y_j, -|r_j|^2, 0]. A prefix (class) key is [0, 0, 0, 1],
which gives it m_h |r_i|^2: after the row shift its bias is 0, as a prefix query's (all zeros) is
everywhere. SDPA then gets no ``attn_mask``, so its fused kernels stay usable.

Half precision: coordinates are centred on the grid (half-integers, exact in bfloat16, like the power-of-two
slopes), and |r|^2, which reaches about 2000 at 1024 px where bfloat16 steps by 8, is split into a
bfloat16-exact high part and the remainder, two features each, so every extra feature is exact in
bfloat16 and float16 and only SDPA's own accumulation rounds (benchmarks/attention_masks.py measures it).
"""
from typing import Tuple

import torch
from torch import nn

from . import grid as grids
from .alibi2d import alibi_slopes
from .grid import Grid, grid_coords

NUM_FEATURES = 6  # 2x, 2y, 1, 1, |r|^2 high, |r|^2 low (see above)
ALIGN = 8  # fused SDPA kernels want head dims that are multiples of 8


def padded_dim(head_dim: int) -> int:
    """Head dim after the extra features, rounded up to a multiple of ALIGN."""
    return -(-(head_dim + NUM_FEATURES) // ALIGN) * ALIGN


@grids.grid_table_builder('alibi2d_sq')
def alibi_sq_features(grid: Grid, device: torch.device, num_heads: int, num_prefix_tokens: int,
                      width: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Query (heads, N, width) and key (1, N, width) features, float32, zero-padded to ``width``."""
    h, w = grid
    x, y = grid_coords(grid, device)
    x, y = x - (w - 1) / 2, y - (h - 1) / 2
    r2 = x * x + y * y
    r2_high = r2.to(torch.bfloat16).float()
    r2_low = r2 - r2_high
    p = num_prefix_tokens
    ones, zeros = torch.ones_like(x), torch.zeros_like(x)
    # built by concatenation, not slice assignment, so FX and torch.export trace it with symbolic sizes
    q = torch.stack([2 * x, 2 * y, ones, ones, r2_high, r2_low], dim=-1)
    q = nn.functional.pad(q, (0, width - NUM_FEATURES, p, 0))[None] * alibi_slopes(num_heads).to(device)[:, None, None]
    k = torch.stack([x, y, -r2_high, -r2_low, zeros, zeros], dim=-1)
    prefix = torch.cat([torch.zeros(p, 4, device=device), torch.ones(p, 2, device=device)], dim=-1)
    k = nn.functional.pad(torch.cat([prefix, k], dim=0), (0, width - NUM_FEATURES))[None]
    return q, k


class Alibi2dSquared(nn.Module):
    """Squared-distance 2D ALiBi as a q/k extension (``kind = 'qk'``); the same for every layer."""
    kind = 'qk'

    def __init__(self, head_dim: int, num_heads: int):
        super().__init__()
        self.head_dim = head_dim
        self.num_heads = num_heads

    @torch.jit.ignore  # scripted models run it in Python: no jit.save
    def extend_qkv(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: Grid, num_prefix_tokens: int,
                   ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, heads, N, head_dim) q, k, v -> q, k, v of ``padded_dim(head_dim)`` for SDPA at ``scale=1``
        (q comes pre-scaled by head_dim^-0.5); the attention output's first head_dim dims are the result."""
        width = padded_dim(self.head_dim) - self.head_dim
        q_feat, k_feat = grids.grid_table('alibi2d_sq', grid, q.device, self.num_heads, num_prefix_tokens, width)
        B = q.shape[0]
        q = torch.cat([q * self.head_dim ** -0.5, q_feat.to(q.dtype).expand(B, -1, -1, -1)], dim=-1)
        k = torch.cat([k, k_feat.to(k.dtype).expand(B, self.num_heads, -1, -1)], dim=-1)
        v = nn.functional.pad(v, (0, width))
        return q, k, v
