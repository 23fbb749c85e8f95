"""Slow, obviously correct implementations the fast paths are tested against."""
from typing import Tuple

import torch


def rope_qkv_reference(
        qkv: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        num_prefix_tokens: int = 0,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Slow, obviously correct rotation (float32 math, clone and assign)."""
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    half = cos.shape[-1]

    def rotate(x: torch.Tensor) -> torch.Tensor:
        out = x.float().clone()
        x1 = out[:, :, num_prefix_tokens:, :half].clone()
        x2 = out[:, :, num_prefix_tokens:, half:2 * half].clone()
        out[:, :, num_prefix_tokens:, :half] = x1 * cos - x2 * sin
        out[:, :, num_prefix_tokens:, half:2 * half] = x2 * cos + x1 * sin
        return out.to(x.dtype)

    return rotate(q), rotate(k), v


