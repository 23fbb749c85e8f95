"""Slow, obviously correct implementations the fast paths are tested against."""
from typing import Tuple

import torch


def rope_qkv_reference(
        qkv: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        num_prefix_tokens: int = 0,
        pairs: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Slow, obviously correct rotation (float32 math, clone and assign); ``pairs``: dims 2j and 2j + 1 rotate
    together (a reparameterized projection's order) instead of j and j + half."""
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    half = cos.shape[-1]
    first, second = (slice(0, 2 * half, 2), slice(1, 2 * half, 2)) if pairs else (slice(0, half), slice(half, 2 * half))

    def rotate(x: torch.Tensor) -> torch.Tensor:
        out = x.float().clone()
        x1 = out[:, :, num_prefix_tokens:, first].clone()
        x2 = out[:, :, num_prefix_tokens:, second].clone()
        out[:, :, num_prefix_tokens:, first] = x1 * cos - x2 * sin
        out[:, :, num_prefix_tokens:, second] = x2 * cos + x1 * sin
        return out.to(x.dtype)

    return rotate(q), rotate(k), v




def lookhere_reference(grid, views_per_head, slopes_per_head, factor):
    """LookHere bias (heads, H*W, H*W) built the way GreenCUBIC/lookhere builds it: direction masks from
    np.less/np.greater on the coordinate grids, 90-degree wedges from np.tri triangles on each query's
    diagonals, Euclidean distances, masked entries set to inf, scaled by slope and negated."""
    import numpy as np
    grid_y, grid_x = grid
    n = grid_x * grid_y
    locs = np.meshgrid(range(grid_x), range(grid_y))
    coords = np.stack(locs, axis=-1).reshape((-1, 2))
    cx, cy = np.arange(grid_x)[:, None, None], np.arange(grid_y)[:, None, None]
    half = {
        'right': np.less(locs[0], cx)[coords[:, 0]], 'left': np.greater(locs[0], cx)[coords[:, 0]],
        'up': np.greater(locs[1], cy)[coords[:, 1]], 'down': np.less(locs[1], cy)[coords[:, 1]],
    }
    half = {k: v.reshape(n, n) for k, v in half.items()}  # True: hidden
    # which diagonal of the grid (np.diag offset k) and of the flipped grid each position lies on
    diag_pos, diag_neg = {}, {}
    for k in range(-max(grid) + 1, max(grid)):
        for labels, flip in ((diag_pos, False), (diag_neg, True)):
            xs, ys = (np.diag(np.fliplr(a) if flip else a, k) for a in locs)
            labels.update({(int(x), int(y)): k for x, y in zip(xs, ys)})
    tri = {d: np.ones((n, n), dtype=bool) for d in ('up', 'down', 'left', 'right')}
    for i, (x, y) in enumerate(coords):
        k_pos, k_neg = diag_pos[int(x), int(y)], diag_neg[int(x), int(y)]
        trid = np.tri(grid_y, grid_x, k=k_pos, dtype=bool)
        triu = ~np.tri(grid_y, grid_x, k=k_pos - 1, dtype=bool)
        trir = np.fliplr(np.tri(grid_y, grid_x, k=k_neg, dtype=bool))
        tril = ~np.fliplr(np.tri(grid_y, grid_x, k=k_neg - 1, dtype=bool))
        tri['up'][i] = ~(triu & tril).flatten()
        tri['down'][i] = ~(trid & trir).flatten()
        tri['right'][i] = ~(triu & trir).flatten()
        tri['left'][i] = ~(trid & tril).flatten()
    dist = np.sqrt(((coords[:, None, :] - coords[None, :, :]) ** 2).sum(-1))
    out = []
    for views, slope in zip(views_per_head, slopes_per_head):
        hidden = np.zeros((n, n), dtype=bool)
        for view in views:
            if view.startswith('tri_'):
                hidden |= tri[view[4:]]
            elif view.startswith('diag_'):
                _, a, b = view.split('_')
                hidden |= tri[a] & tri[b]
            else:
                hidden |= half[view]
        lh = dist.copy()
        lh[hidden] = np.inf
        out.append(-(factor * slope) * lh)
    return torch.from_numpy(np.stack(out))
